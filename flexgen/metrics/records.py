"""Evaluation records: the `Record` schema, its JSON Lines storage, and the rules that decide which records may be
compared. Rendering them is `flexgen.metrics.leaderboard`.

- `Record` is one evaluation: one metric value of one model under one named protocol, with everything needed to
  decide whether two numbers may be compared (metric variant, detector file and sha256, reference statistics sha256,
  sample count, storage) and to reproduce it (checkpoint hash, config, sampler, steps, CFG scale, seeds), plus the
  cost (GFLOPs per forward and per sample, latency). Published numbers from papers are records too, with
  `published=True`, a `source` and a `confidence` tag ("verified", "recalled", "fig", ...). `interval` is the 95%
  interval [low, high] of the value when the evaluation computed one. A record with `extra["floor"]` true is the
  real-vs-real floor of its table (real clips against the reference statistics): a reference, not a model, without
  cost fields (`Record.is_floor`).
- `append_record` / `read_records` keep records as JSON Lines (one object per line, appended and fsynced);
  `load_anchors` reads the published numbers from `flexgen/metrics/anchors.json` (`eval/anchors.json` links to
  it); `record_from_evaluation` makes a record of one `flexgen eval` result and what the generator wrote beside
  its samples.
- `build_tables` groups records into comparable tables. Rows share a table only when dataset, metric, protocol,
  detector sha256, reference-statistics sha256, N and storage are all identical; published rows never share a table
  with measured ones (their detector is "published"). FID/FVD from different pipelines are different numbers.
- `rank_labels` ranks a table's rows by their intervals: a row's rank is 1 + the number of rows whose 95% interval
  lies entirely on the better side of its own (no overlap), so rows whose intervals overlap share a rank ("2=").
  A row without an interval counts as the point [value, value]. The floor row is not ranked.

FLOP convention: `gflops_per_forward` follows DiT / fvcore and `flexgen bench flops`: one multiply-accumulate counts
once (so it equals GMACs), for one denoiser call at batch 1 without CFG, which is what DiT, Latte and FlexDiT print as
"GFLOPs". `gflops_per_sample` is the whole generation of one sample (all steps, CFG included) when it is known. The
leaderboard shows both under their true name, GMACs ("GMACs/fwd", "GMACs/sample"); the field names stay as stored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA = "flexgen-eval/1"
ANCHORS_SCHEMA = "flexgen-anchors/1"

# Metrics where a larger value is better; every other metric (fid, fvd, kid, sfid, ...) is "lower is better".
HIGHER_IS_BETTER = frozenset({"is", "clip", "clip_score", "precision", "recall", "acc_synthmotion"})

PUBLISHED = "published"


# ---------------------------------------------------------------------------------------------------------------
# Record: one evaluation (or one published number)
# ---------------------------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_finite_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x)


def _checked_interval(interval: Any) -> list[float]:
    """`interval` as [low, high] floats; a ValueError unless it is two finite numbers with low <= high."""
    if not isinstance(interval, list | tuple) or len(interval) != 2 or not all(map(_is_finite_number, interval)):
        raise ValueError(f"record interval must be [low, high], two finite numbers, got {interval!r}")
    low, high = float(interval[0]), float(interval[1])
    if low > high:
        raise ValueError(f"record interval [low, high] has low > high: {interval!r}")
    return [low, high]


@dataclass
class Record:
    """One metric value of one model under one protocol. Serialised flat, as one JSON object per line."""

    # What was measured
    metric: str                               # "fvd", "fid", "is", "kid", ...
    protocol: str                             # metric variant, e.g. "styleganv_fvd2048_16f", "adm_fid50k"
    value: float
    dataset: str                              # "ffs", "sky", "ucf101", "taichi", "imagenet256", "coco30k", ...
    value_std: float | None = None            # over runs (one seed per run), when there were several
    interval: list[float] | None = None       # 95% interval [low, high] of value, when the evaluation computed one
    # Comparability: rows share a table only when all of these agree
    detector_file: str = ""                   # e.g. "i3d_torchscript.pt"
    detector_sha256: str = ""
    reference_sha256: str = ""                # sha256 of the reference (real-data) statistics file
    num_samples: int | None = None            # generated samples in the statistics (the N in FID-50K)
    storage: str = ""                         # how samples were stored before the detector: "png", "mp4", "memory"
    # The model
    model_family: str = ""                    # "latte", "dit", "pixart-alpha"
    model_variant: str = ""                   # "Latte-XL/2", "DiT-XL/2"
    method: str = "baseline"                  # "baseline", "flexdit", "flexdit r=[0.61,0.86]", ...
    ckpt_sha256: str = ""
    config: str = ""                          # config file (and overrides) the model was built from
    # Sampling
    sampler: str = ""                         # "ddpm", "ddim", "dpm-solver"
    steps: int | None = None
    cfg_scale: float | None = None
    seeds: list[int] = field(default_factory=list)   # one global seed per run
    # Cost
    gflops_per_forward: float | None = None   # one denoiser call, batch 1, no CFG; MACs counted once (DiT/fvcore)
    gflops_per_sample: float | None = None    # one whole sample: all steps, CFG included
    latency_s: float | None = None            # seconds per sample
    # Provenance
    date: str = field(default_factory=_now)
    published: bool = False                   # True: a number copied from a paper, not measured here
    source: str = ""                          # paper / table / issue the published number comes from
    confidence: str = ""                      # for published numbers: "verified", "recalled", "fig", "2ary"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)   # free-form: gpu, batch, precision, git commit, ...
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        for name in ("metric", "protocol", "dataset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"record field {name!r} must be a non-empty string")
        if not _is_finite_number(self.value):
            raise ValueError(f"record value must be a finite number, got {self.value!r}")
        self.value = float(self.value)
        if self.interval is not None:
            self.interval = _checked_interval(self.interval)
        if self.published and not self.source:
            raise ValueError("a published record needs its source (paper, table or issue)")
        if not self.published and not (self.detector_sha256 and self.reference_sha256):
            raise ValueError("a measured record needs detector_sha256 and reference_sha256: without them it cannot "
                             "be placed in a comparable table")
        if self.schema != SCHEMA:
            raise ValueError(f"record schema {self.schema!r} is not {SCHEMA!r}")

    @property
    def higher_is_better(self) -> bool:
        return self.metric.lower() in HIGHER_IS_BETTER

    @property
    def model_name(self) -> str:
        return self.model_variant or self.model_family or "?"

    @property
    def is_floor(self) -> bool:
        """True for the real-vs-real floor row (`extra["floor"]`): a reference for the table, not a model."""
        return bool(self.extra.get("floor"))

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of the 95% interval; the point (value, value) when the record has no interval."""
        if self.interval is None:
            return self.value, self.value
        return self.interval[0], self.interval[1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Record:
        """Build a record from a parsed JSON object; unknown or missing fields are a ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown record field(s) {unknown} (put free-form information under 'extra')")
        missing = [name for name in ("metric", "protocol", "value", "dataset") if name not in data]
        if missing:
            raise ValueError(f"missing record field(s) {missing}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------------------------
# JSON Lines storage
# ---------------------------------------------------------------------------------------------------------------

def append_record(path: str | Path, record: Record) -> None:
    """Append `record` to the JSON Lines file at `path` as one line, flushed and fsynced (creates the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record.to_dict(), ensure_ascii=False) + "\n"
    # A previous writer killed mid-line leaves no final newline: start on a fresh line so that only the broken
    # line is malformed (read_records names it), not this one as well.
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _sample_provenance(fake: Path) -> dict[str, Any]:
    """Record fields from the sample manifest (`flexgen.sampling.manifest.SampleManifest`) that `flexgen sample`
    (samples.json) or `flexgen generate` (FILE.json) wrote beside the samples; {} when there is none."""
    from flexgen.sampling.manifest import find_manifest

    found = find_manifest(fake)
    if found is None:
        return {}
    m = found[1]
    return {"model_family": m.family, "model_variant": m.model, "method": m.method, "ckpt_sha256": m.checkpoint_sha256,
            "config": str(m.settings.get("config") or m.checkpoint), "sampler": m.sampler, "steps": m.steps,
            "cfg_scale": m.cfg_scale, "seeds": [m.seed], "storage": m.storage,
            "gflops_per_forward": m.cost.get("gmacs_per_forward"), "gflops_per_sample": m.cost.get("gmacs_per_sample"),
            "latency_s": m.cost.get("seconds_per_sample")}


def record_from_evaluation(result: dict[str, Any], dataset: str, fake: str | Path | None = None,
                           **fields: Any) -> Record:
    """A Record of one `flexgen eval` result (`evaluate` / `eval_main` output), with the model, sampler and cost
    read from the generator's JSON beside the samples in `fake`; `fields` override any of them (e.g. method).
    Its protocol is the result's: the one computed (renamed by its real count when fewer real items were allowed,
    e.g. fvd16x2048_16f), so it never shares a table with the full protocol's rows."""
    fake = Path(fake if fake is not None else result.get("fake", "."))
    provenance = _sample_provenance(fake) if fake.is_dir() else {}
    reference = result.get("reference_stats_sha256") or result.get("prompts_sha256") or ""
    detector = result.get("detector", "")
    extra = {k: result[k] for k in ("kid", "kid_std", "value_std", "frechet_distance", "num_real",
                                    "num_real_discarded") if k in result}
    data = {"metric": result["metric"], "protocol": result["protocol"], "value": result["value"], "dataset": dataset,
            "detector_file": str(detector), "detector_sha256": result.get("detector_sha256") or "",
            "reference_sha256": reference, "num_samples": result.get("num_fake", result.get("count")),
            **provenance, "extra": extra}
    if result.get("interval") is not None:
        data["interval"] = list(result["interval"])
    data.update({k: v for k, v in fields.items() if v is not None})
    return Record(**{k: v for k, v in data.items() if v is not None})


def read_records(path: str | Path) -> list[Record]:
    """All records in the JSON Lines file at `path` (blank lines skipped); a bad line is a ValueError naming it."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(Record.from_dict(json.loads(line)))
            except (ValueError, TypeError) as e:     # JSONDecodeError is a ValueError; TypeError: bad field types
                raise ValueError(f"{path}:{lineno}: malformed record: {e}") from e
    return records


def load_anchors(path: str | Path) -> list[Record]:
    """Published numbers from an anchors file: {"schema": ANCHORS_SCHEMA, "anchors": [record fields, ...]}.

    Every anchor is a `Record` with `published=True` (set here; an anchor saying otherwise is an error).
    """
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("schema") != ANCHORS_SCHEMA or not isinstance(data.get("anchors"), list):
        raise ValueError(f"{path}: not an anchors file (expected schema {ANCHORS_SCHEMA!r} and an 'anchors' list)")
    anchors = []
    for i, entry in enumerate(data["anchors"]):
        try:
            if not isinstance(entry, dict):
                raise ValueError(f"expected a JSON object, got {type(entry).__name__}")
            if entry.get("published", True) is not True:
                raise ValueError("anchors are published numbers; 'published' must be true or absent")
            anchors.append(Record.from_dict({**entry, "published": True}))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: anchor #{i}: {e}") from e
    return anchors


# ---------------------------------------------------------------------------------------------------------------
# Grouping into comparable tables
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TableKey:
    """Everything two rows must share to be compared. Published rows have detector = reference = "published"."""

    dataset: str
    metric: str
    protocol: str
    detector: str
    reference: str
    num_samples: int | None
    storage: str

    @property
    def published(self) -> bool:
        return self.detector == PUBLISHED

    def sort_key(self) -> tuple:
        return (self.dataset, self.metric, self.protocol, self.published, self.detector, self.reference,
                -1 if self.num_samples is None else self.num_samples, self.storage)


@dataclass
class Table:
    key: TableKey
    rows: list[Record]                       # best first

    @property
    def higher_is_better(self) -> bool:
        return self.key.metric.lower() in HIGHER_IS_BETTER

    @property
    def title(self) -> str:
        """'FVD · ffs · fvd2048_16f · measured': metric, dataset, protocol, measured or published."""
        kind = "published" if self.key.published else "measured"
        return f"{self.key.metric.upper()} · {self.key.dataset} · {self.key.protocol} · {kind}"

    def ranks(self) -> list[str]:
        """The rank cell of every row, in row order (`rank_labels`)."""
        return rank_labels(self.rows, self.higher_is_better)


def table_key(record: Record) -> TableKey:
    return TableKey(
        dataset=record.dataset, metric=record.metric, protocol=record.protocol,
        detector=PUBLISHED if record.published else record.detector_sha256,
        reference=PUBLISHED if record.published else record.reference_sha256,
        num_samples=record.num_samples, storage=record.storage)


def build_tables(records: Iterable[Record]) -> list[Table]:
    """Group records into tables of comparable rows; rows best first, tables sorted by dataset, metric, protocol."""
    groups: dict[TableKey, list[Record]] = {}
    for record in records:
        groups.setdefault(table_key(record), []).append(record)
    tables = []
    for key, rows in groups.items():
        sign = -1.0 if key.metric.lower() in HIGHER_IS_BETTER else 1.0
        rows.sort(key=lambda r: (sign * r.value, r.model_name, r.method))
        tables.append(Table(key, rows))
    tables.sort(key=lambda t: t.key.sort_key())
    return tables


# ---------------------------------------------------------------------------------------------------------------
# Ranking by 95% intervals
# ---------------------------------------------------------------------------------------------------------------

def beyond(a: tuple[float, float], b: tuple[float, float], higher_is_better: bool) -> bool:
    """True when interval `a` = (low, high) lies entirely on the better side of interval `b`: no overlap, and
    touching ends count as overlap."""
    return a[0] > b[1] if higher_is_better else a[1] < b[0]


def rank_labels(rows: list[Record], higher_is_better: bool) -> list[str]:
    """The rank of each row, in row order: 1 + the number of (non-floor) rows whose interval lies entirely on the
    better side of the row's own (`beyond`). Ranks shared by several rows get an "=" ("2="); the floor row gets
    "floor". Rows keep their order (best value first); a row with a wide interval may show a better rank than a
    row above it, since the rank counts only rows that beat it beyond both intervals."""
    ranked = [r for r in rows if not r.is_floor]
    ranks = [1 + sum(beyond(o.bounds, r.bounds, higher_is_better) for o in ranked) for r in ranked]
    counts = Counter(ranks)
    labels = iter(f"{rank}=" if counts[rank] > 1 else str(rank) for rank in ranks)
    return ["floor" if r.is_floor else next(labels) for r in rows]
