"""The run's model folders, ``best/`` and ``last/``: what goes into them (``checkpoint`` writes them atomically).

Each is a plain Hugging Face model folder (the EMA weights with ``--ema``, LoRA adapters merged into a copy
with ``--tune lora``, the SVD residuals merged with ``--tune svd-residual``) with its processor and
``dftune.json`` (label indices, the data's crop settings, the epoch and its validation). ``last/`` also holds
``training_state/``: what ``--resume`` needs beside its own weights, which it does not copy; only where
``last/``'s model is not the raw training weights (``--ema``, LoRA, SVD residuals) does the state hold them too
(``checkpoint.WEIGHTS_FILE``). In an epoch that is the best so far, ``last/``'s model files are hard links to
``best/``'s (written once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dftune.model import meta as modelmeta
from dftune.training import checkpoint as ckpt
from dftune.training import trainable
from dftune.training.checkpoint import STATE_DIR
from dftune.training.validate import averaged


@dataclass
class ModelWriter:
    """Writes the model folders of one run.

    ``model`` is the prepared training model, ``train_names`` the names of its parameters that train,
    ``ema`` the run's :class:`dftune.training.ema.EMA` or None, ``crop`` the data's crop settings; the last
    four fields are what every folder's ``dftune.json`` says beside the epoch and its validation.
    """

    accelerator: object
    model: object
    processor: object
    train_names: set
    ema: object
    crop: modelmeta.CropSettings
    fake_index: int
    real_index: int
    monitor: str
    monitor_level: str
    trained_from: str
    data: str
    datasets: dict | None = None  # a mix's folders (train --data A --data B): name -> path
    select_on: str = "val"
    provenance: dict | None = None  # the starting model's licence and base model (dftune.model.card.provenance)
    train_methods: list | None = None  # the fake methods (generators) of the train split: evaluate's "seen"

    @property
    def raw_apart(self) -> bool:
        """Whether last/'s model is other than the raw training weights (the average with --ema, merged
        adapters with LoRA): only then does the training state need its own copy of them."""
        return self.ema is not None or trainable.saves_merged(self.accelerator.unwrap_model(self.model))

    def raw_weights(self) -> dict:
        """The trained parameters and the buffers of the training model, under its own names."""
        m = self.accelerator.unwrap_model(self.model)
        params = {n for n, _ in m.named_parameters()}
        return {n: t.detach().to("cpu", copy=True) for n, t in m.state_dict().items()
                if n in self.train_names or n not in params}

    def save(self, dest: Path, record: dict, best_epoch: int, trainer_state: dict | None = None,
             same_as: Path | None = None) -> None:
        """Write model folder ``dest`` for epoch ``record`` (the run's best so far: ``best_epoch``), from every
        process. With ``trainer_state`` (the counters of ``trainer.json``) it is a resumable checkpoint;
        with ``same_as``, the folder where this very model was just saved, its model files are linked."""
        with_state = trainer_state is not None

        def write(folder: Path) -> None:
            if self.ema is not None and with_state:
                self.ema.save(folder / STATE_DIR)  # --resume continues the average
            if same_as is not None:  # the same model was just saved there: link its files, don't write them again
                ckpt.link_files(same_as, folder)
                return
            self._write_model(folder, record, best_epoch)

        ckpt.save(self.accelerator, dest, write, trainer_state,
                  raw_weights=self.raw_weights if with_state and self.raw_apart else None)

    def _write_model(self, folder: Path, record: dict, best_epoch: int) -> None:
        # a plain Hugging Face model: the EMA weights (--ema), LoRA adapters (--tune lora) or SVD residuals
        # (--tune svd-residual) merged into a copy
        with averaged(self.ema):
            trainable.merged_copy(self.accelerator.unwrap_model(self.model)).save_pretrained(folder)
        self.processor.save_pretrained(folder)
        val = record["val"]
        extra = {"epoch": record["epoch"], "best_epoch": best_epoch, "monitor": self.monitor,
                 "monitor_level": self.monitor_level, "metrics": val, "trained_from": self.trained_from,
                 "data": self.data}
        if self.datasets:
            extra["datasets"] = self.datasets
        extra.update(self.provenance or {})
        if self.train_methods is not None:
            extra["train_methods"] = self.train_methods
        for key in ("check", "datasets"):
            if record.get(key):
                extra[f"{key}_metrics"] = record[key]
        if self.select_on != "val":
            extra["selected_on"] = self.select_on
        if val is not None:
            # --threshold-on val: threshold and its source stay the defaults (0.5, "default"): the one predict
            # applies comes from `dftune evaluate --write-threshold`, tuned with its TTA and video pooling. The val
            # optimum seen here (frame or video level, no TTA) is kept as information only.
            extra["train_val_threshold"] = {
                "frame": val["frame"]["best_threshold"], "video": val["video"]["best_threshold"],
                "tta": [], "note": "frame/video level, no TTA; not applied: run `dftune evaluate "
                                   "--write-threshold` to tune the threshold predict uses"}
        meta = modelmeta.ModelMeta(fake_index=self.fake_index, real_index=self.real_index, crop=self.crop,
                                   extra=extra)
        stored = record.get("threshold") or {}
        if stored.get("source", {}).get("by", "default") != "default":  # --threshold-on check: the check sets'
            meta.threshold, meta.threshold_source = float(stored["value"]), dict(stored["source"])
        modelmeta.save(folder, meta)
