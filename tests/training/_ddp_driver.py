"""Launched by test_distributed.py under torchrun: train on toy data while recording what every rank sees."""

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch

import storm_sc as st
from storm_sc.models import StormModel
from storm_sc.training import fit


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RankProbe(L.Callback):
    """Writes rank<r>.json: this rank's identity, its first batch, and its weights before/after the first step."""

    def __init__(self, folder: Path, model: StormModel) -> None:
        self.folder = folder
        self.model = model
        self.record: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and "first_batch" not in self.record:
            self.record["first_batch"] = hashlib.sha256(batch.gene_values.numpy().tobytes()).hexdigest()
            self.record["weights_before"] = digest(pl_module.network)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1 and "weights_after_step" not in self.record:
            self.record["weights_after_step"] = digest(pl_module.network)

    def on_train_end(self, trainer, pl_module):
        import torch.distributed as dist

        self.record.update(
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            backend=dist.get_backend() if dist.is_initialized() else None,
            strategy=type(trainer.strategy).__name__,
            weights_final=digest(pl_module.network),
            weights_final_storm=self.model.weights_digest(),
            steps=trainer.global_step,
        )
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    st.settings.verbosity = "WARNING"
    sdata = st.datasets.toy(n_obs=160, n_genes=30, n_domains=3, seed=0)
    model = StormModel("storm-tiny", sdata["table"].var_names, seed=0)
    fit(
        model,
        sdata,
        output_dir=out,
        callbacks=[RankProbe(out, model)],
        verbose=False,
        max_epochs=1,
        batch_size=16,
        val_fraction=0.0,
        accelerator="cpu",
        seed=0,
    )


if __name__ == "__main__":
    main()
