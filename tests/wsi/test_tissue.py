from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from storm_sc.wsi import detect_tissue, open_slide
from tests._paths import real_data
from tests.wsi._slides import PINK, blob_slide, glass


def test_stained_region_is_tissue_and_glass_is_not():
    rgb = blob_slide((200, 300), np.random.default_rng(0), box=(50, 150, 60, 240), colour=PINK)
    mask = detect_tissue(rgb, mpp=5.0)
    truth = np.zeros((200, 300), bool)
    truth[50:150, 60:240] = True
    assert (mask == truth).mean() > 0.98


def test_an_image_that_is_all_tissue_is_all_tissue():
    # A region exported from inside the tissue has no glass: Otsu split pale eosin from haematoxylin (40% of a
    # her2st tumour crop lost). Stripes wider than the clean-up sizes, so that only the threshold decides.
    rng = np.random.default_rng(0)
    rgb = np.empty((200, 300, 3), np.uint8)
    for i, colour in enumerate([(150, 70, 150), (235, 165, 200)] * 3):  # haematoxylin-rich, pale eosin
        rgb[:, i * 50 : (i + 1) * 50] = colour
    rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    assert detect_tissue(rgb, mpp=10.0).mean() > 0.99
    # ... while the same stripes on glass are still told from the glass
    on_glass = np.full((400, 300, 3), 238, np.uint8)
    on_glass[100:300] = rgb
    mask = detect_tissue(on_glass, mpp=10.0)
    assert mask[100:300].mean() > 0.99 and mask[:90].mean() < 0.01 and mask[310:].mean() < 0.01


def test_blank_glass_has_no_tissue_and_labels_and_pen_are_ignored():
    rng = np.random.default_rng(1)
    assert not detect_tissue(glass((120, 120), rng), mpp=10.0).any()
    rgb = glass((120, 120), rng)
    rgb[:30, :30] = (25, 25, 35)  # a black slide label
    rgb[60:70, 20:100] = (40, 140, 60)  # a green pen line
    assert not detect_tissue(rgb, mpp=10.0).any()


def test_small_debris_is_removed_and_small_holes_filled():
    rng = np.random.default_rng(2)
    rgb = blob_slide((200, 200), rng, box=(40, 160, 40, 160))
    rgb[90:94, 90:94] = 243  # a 40 um hole at 10 um/px
    rgb[5:8, 180:183] = (120, 70, 160)  # 30 um debris
    mask = detect_tissue(rgb, mpp=10.0)
    assert mask[91, 91]
    assert not mask[6, 181]


def test_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        detect_tissue(np.zeros((10, 10, 3), float), mpp=1.0)
    with pytest.raises(ValueError, match="mpp"):
        detect_tissue(np.zeros((10, 10, 3), np.uint8), mpp=0.0)
    with pytest.raises(TypeError, match=r"`mpp` \(microns per thumbnail pixel\) must be a number .* got NoneType"):
        detect_tissue(np.zeros((10, 10, 3), np.uint8), mpp=None)


@pytest.mark.realdata
@pytest.mark.parametrize("section", ["mousebrain/V10F24-078_A1", "lung_SARS-CoV-2/V10F24-110_C1",
                                     "kidneyorganoid/V19D02-085_B1"])  # fmt: skip
def test_real_visium_hires_agrees_with_space_ranger_tissue_calls(section):
    spatial = real_data("visium_ffpe_villacampa2021", *section.split("/"), "spatial")
    sf = json.loads((spatial / "scalefactors_json.json").read_text())
    mpp = 55.0 / sf["spot_diameter_fullres"] / sf["tissue_hires_scalef"]
    with open_slide(spatial / "tissue_hires_image.png", mpp=mpp) as slide:
        thumb, down = slide.thumbnail(14.0)
    mask = detect_tissue(thumb, mpp=mpp * down)
    pos = pd.read_csv(spatial / "tissue_positions_list.csv", header=None)
    scale = sf["tissue_hires_scalef"] / down
    rows = np.clip((pos[4].to_numpy() * scale).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip((pos[5].to_numpy() * scale).astype(int), 0, mask.shape[1] - 1)
    called = mask[rows, cols]
    in_tissue = pos[1].to_numpy() == 1
    # Space Ranger's own detection (with manual review) as the reference; fiducial dots must not count as tissue.
    assert called[in_tissue].mean() > 0.85
    assert (~called[~in_tissue]).mean() > 0.95


@pytest.mark.realdata
def test_real_crops_from_inside_the_tissue_and_around_it():
    # Regions exported from a her2st slide (1/8 of full resolution): from inside the tumour, all tissue (Otsu alone
    # lost up to 5% there, and 40% of a full-resolution crop); around it, with a fifth of tinted glass, whose pixels
    # (saturation ~0.07) must stay glass.
    from PIL import Image

    jpg = real_data("her2st", "data", "ST-imgs", "C", "C3", "5714_HE_BT_D1.jpg")
    with Image.open(jpg) as im:
        rgb = np.asarray(im.convert("RGB").reduce(8))
    mpp = 0.78 * 8
    whole = detect_tissue(rgb, mpp=mpp)
    ys, xs = np.nonzero(whole)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    for half in (80, 120):
        assert detect_tissue(rgb[cy - half : cy + half, cx - half : cx + half], mpp=mpp).mean() > 0.99
    box = (slice(max(cy - 260, 0), cy + 260), slice(max(cx - 260, 0), cx + 260))
    crop, reference = detect_tissue(rgb[box], mpp=mpp), whole[box]
    assert 0.1 < (~reference).mean() < 0.4
    assert (crop & ~reference).sum() / (~reference).sum() < 0.05


@pytest.mark.realdata
def test_real_her2st_section_tissue_under_the_spots_and_not_in_the_corners():
    jpg = real_data("her2st", "data", "ST-imgs", "C", "C2", "5714_HE_BT_C2.jpg")
    spots = pd.read_csv(real_data("her2st", "data", "ST-spotfiles", "C2_selection.tsv"), sep="\t")
    with open_slide(jpg, mpp=0.78) as slide:
        thumb, down = slide.thumbnail(14.0)
    mask = detect_tissue(thumb, mpp=0.78 * down)
    r = (spots["pixel_y"].to_numpy() / down).astype(int)
    c = (spots["pixel_x"].to_numpy() / down).astype(int)
    assert mask[r, c].mean() > 0.9
    k = mask.shape[0] // 10
    assert not mask[:k, :k].any()
    assert not mask[-k:, :k].any()
    assert 0.1 < mask.mean() < 0.6


@pytest.mark.parametrize("ink", [(40, 60, 170), (200, 30, 40)])  # blue and red marker
def test_marker_ink_does_not_hide_the_tissue(ink):
    # Ink (saturation ~0.75) on a few % of the slide lifted Otsu's threshold above the tissue's: all tissue was lost
    # and only the pen line was left to tile.
    rgb = blob_slide((200, 300), np.random.default_rng(0), box=(50, 150, 60, 240), colour=PINK)
    rgb[10:16, 10:290] = ink
    mask = detect_tissue(rgb, mpp=5.0)
    assert mask[50:150, 60:240].mean() > 0.98


@pytest.mark.realdata
@pytest.mark.parametrize("ink", [(40, 60, 170), (200, 30, 40)])
def test_marker_line_in_the_margin_of_a_real_slide(ink):
    spatial = real_data("visium_ffpe_villacampa2021", "lung_SARS-CoV-2", "V10F24-110_C1", "spatial")
    sf = json.loads((spatial / "scalefactors_json.json").read_text())
    mpp = 55.0 / sf["spot_diameter_fullres"] / sf["tissue_hires_scalef"]
    with open_slide(spatial / "tissue_hires_image.png", mpp=mpp) as slide:
        thumb, down = slide.thumbnail(14.0)
    clean = detect_tissue(thumb, mpp=mpp * down)
    thumb[5:10, 10:-10] = ink  # a 70 um marker line along the top margin
    marked = detect_tissue(thumb, mpp=mpp * down)
    assert (marked[10:] == clean[10:]).mean() > 0.999


def test_tissue_stained_as_strongly_as_ink_is_still_tissue():
    # Otsu's fit without ink-like pixels would not see tissue saturated above 0.6 everywhere: the fit with all
    # pixels still finds it.
    for colour in [(150, 60, 140), (120, 20, 110)]:  # saturation 0.60 and 0.83, evenly
        rgb = np.full((200, 300, 3), 240, np.uint8)
        rgb[50:150, 60:240] = colour
        assert detect_tissue(rgb, mpp=5.0)[50:150, 60:240].all()
