"""Evaluation records and the leaderboard built from them.

- `Record` is one evaluation: one metric value of one model under one named protocol, with everything needed to
  decide whether two numbers may be compared (metric variant, detector file and sha256, reference statistics sha256,
  sample count, storage) and to reproduce it (checkpoint hash, config, sampler, steps, CFG scale, seeds), plus the
  cost (GFLOPs per forward and per sample, latency). Published numbers from papers are records too, with
  `published=True`, a `source` and a `confidence` tag ("verified", "recalled", "fig", ...).
- `append_record` / `read_records` keep records as JSON Lines (one object per line, appended and fsynced);
  `load_anchors` reads the published numbers from `eval/anchors.json`.
- `build_tables` groups records into leaderboard tables. Rows share a table only when dataset, metric, protocol,
  detector sha256, reference-statistics sha256, N and storage are all identical; published rows never share a table
  with measured ones (their detector is "published"). FID/FVD from different pipelines are different numbers.
- `render_markdown`, `render_html` (one self-contained page, inline CSS) and `render_png` (FLOPs-vs-metric scatter,
  one panel per table, drawn with PIL) turn the tables into reports; `leaderboard_main` is `flexgen leaderboard`.

FLOP convention: `gflops_per_forward` follows DiT / fvcore and `flexgen bench flops`: one multiply-accumulate counts
once (so it equals GMACs), for one denoiser call at batch 1 without CFG, which is what DiT, Latte and FlexDiT print as
"GFLOPs". `gflops_per_sample` is the whole generation of one sample (all steps, CFG included) when it is known.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA = "flexgen-eval/1"
ANCHORS_SCHEMA = "flexgen-anchors/1"

# Metrics where a larger value is better; every other metric (fid, fvd, kid, sfid, ...) is "lower is better".
HIGHER_IS_BETTER = frozenset({"is", "clip", "clip_score", "precision", "recall"})

FORMATS = ("md", "html", "png")
PUBLISHED = "published"


# ---------------------------------------------------------------------------------------------------------------
# Record: one evaluation (or one published number)
# ---------------------------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Record:
    """One metric value of one model under one protocol. Serialised flat, as one JSON object per line."""

    # What was measured
    metric: str                               # "fvd", "fid", "is", "kid", ...
    protocol: str                             # metric variant, e.g. "styleganv_fvd2048_16f", "adm_fid50k"
    value: float
    dataset: str                              # "ffs", "sky", "ucf101", "taichi", "imagenet256", "coco30k", ...
    value_std: float | None = None            # over runs (one seed per run), when there were several
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
        if isinstance(self.value, bool) or not isinstance(self.value, int | float) or not math.isfinite(self.value):
            raise ValueError(f"record value must be a finite number, got {self.value!r}")
        self.value = float(self.value)
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
    """Record fields from what the generator wrote beside its samples: `samples.json` (`flexgen sample`) or the JSON
    of `flexgen generate` (`images` + `settings`) in the folder. {} when there is neither."""
    from flexgen.files import file_sha256

    samples = fake / "samples.json"
    if samples.is_file():
        s = json.loads(samples.read_text())
        run = s.get("run_config") or {}
        model = run.get("model", {})
        density = s.get("density") or None
        flops = s.get("flops") or {}
        per_sample = flops.get("gmacs_per_sample")
        evaluations = flops.get("model_evaluations")
        return {"model_family": "latte" if (s.get("model") or {}).get("temporal") else "dit",
                "model_variant": model.get("preset", ""),
                "method": f"flexdit {density['layout']}" if density else "baseline",
                "ckpt_sha256": s.get("checkpoint_sha256") or "", "config": str(s.get("config") or ""),
                "sampler": s.get("sampler", ""), "steps": s.get("steps"), "cfg_scale": s.get("cfg_scale"),
                "seeds": [s["seed"]] if "seed" in s else [], "storage": s.get("format", ""),
                "gflops_per_sample": per_sample,
                "gflops_per_forward": per_sample / evaluations if per_sample and evaluations else None}
    for candidate in sorted(fake.glob("*.json")):
        g = json.loads(candidate.read_text())
        if not isinstance(g, dict) or "images" not in g or "settings" not in g:
            continue
        settings, cost = g["settings"], g.get("cost") or {}
        transformer = Path(settings.get("transformer") or "")
        folder = transformer / "transformer" if (transformer / "transformer").is_dir() else transformer
        weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        return {"model_family": "pixart-alpha", "model_variant": transformer.name,
                "method": f"flexdit {settings['layout']}" if settings.get("layout") else "baseline",
                "ckpt_sha256": file_sha256(weights[0]) if len(weights) == 1 else "",
                "config": str(transformer), "sampler": settings.get("scheduler", ""), "steps": settings.get("steps"),
                "cfg_scale": settings.get("guidance"), "seeds": [settings["seed"]] if "seed" in settings else [],
                "storage": "png", "gflops_per_forward": cost.get("gmacs_per_forward"),
                "gflops_per_sample": cost.get("gmacs_per_image"), "latency_s": cost.get("seconds_per_image")}
    return {}


def record_from_evaluation(result: dict[str, Any], dataset: str, fake: str | Path | None = None,
                           **fields: Any) -> Record:
    """A Record of one `flexgen eval` result (`evaluate` / `eval_main` output), with the model, sampler and cost
    read from the generator's JSON beside the samples in `fake`; `fields` override any of them (e.g. method)."""
    fake = Path(fake if fake is not None else result.get("fake", "."))
    provenance = _sample_provenance(fake) if fake.is_dir() else {}
    reference = result.get("reference_stats_sha256") or result.get("prompts_sha256") or ""
    detector = result.get("detector", "")
    extra = {k: result[k] for k in ("kid", "kid_std", "value_std", "frechet_distance", "num_real") if k in result}
    data = {"metric": result["metric"], "protocol": result["protocol"], "value": result["value"], "dataset": dataset,
            "detector_file": str(detector), "detector_sha256": result.get("detector_sha256") or "",
            "reference_sha256": reference, "num_samples": result.get("num_fake", result.get("count")),
            **provenance, "extra": extra}
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
        kind = "published" if self.key.published else "measured"
        return f"{self.key.metric.upper()} · {self.key.dataset} · {self.key.protocol} · {kind}"

    @property
    def subtitle(self) -> str:
        k = self.key
        parts = []
        if k.published:
            parts.append("numbers as printed by their sources; not re-measured, not comparable with measured tables")
        else:
            detector_file = self.rows[0].detector_file if self.rows else ""
            parts.append(f"detector {_short(k.detector)}" + (f" ({detector_file})" if detector_file else ""))
            parts.append(f"reference stats {_short(k.reference)}")
        parts.append(f"N {k.num_samples if k.num_samples is not None else '?'}")
        if k.storage:
            parts.append(f"storage {k.storage}")
        parts.append("higher is better" if self.higher_is_better else "lower is better")
        return " · ".join(parts)


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
# Cell formatting shared by Markdown and HTML
# ---------------------------------------------------------------------------------------------------------------

COLUMNS = ("#", "model", "method", "value", "GFLOPs/fwd", "GFLOPs/sample", "sampler", "steps", "CFG",
           "latency s", "date", "kind", "source / ckpt")


def _short(digest: str, n: int = 12) -> str:
    return digest[:n] + "…" if len(digest) > n else digest


def _num(x: float | int | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def row_cells(rank: int, r: Record) -> list[str]:
    value = _num(r.value) + (f" ± {r.value_std:.2f}" if r.value_std is not None else "")
    kind = f"published ({r.confidence})" if r.published and r.confidence else ("published" if r.published
                                                                                 else "measured")
    origin = r.source if r.published else (f"ckpt {_short(r.ckpt_sha256)}" if r.ckpt_sha256 else "")
    return [str(rank), r.model_name, r.method, value, _num(r.gflops_per_forward), _num(r.gflops_per_sample),
            r.sampler or "–", _num(r.steps, "d"), _num(r.cfg_scale, "g"), _num(r.latency_s, ".3g"),
            r.date[:10] or "–", kind, origin or "–"]


# ---------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------

def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(tables: list[Table]) -> str:
    lines = ["# flexgen leaderboard", "",
             "One table per (dataset, metric, protocol, detector sha256, reference statistics sha256, N, storage): "
             "numbers in different tables are not comparable. Published rows are copied from papers and kept in "
             "their own tables.", ""]
    if not tables:
        lines += ["_No records._", ""]
    for table in tables:
        lines += [f"## {_md_escape(table.title)}", "", f"_{_md_escape(table.subtitle)}_", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for rank, r in enumerate(table.rows, start=1):
            lines.append("| " + " | ".join(_md_escape(c) for c in row_cells(rank, r)) + " |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# HTML: one self-contained page (inline CSS, no scripts, no external assets)
# ---------------------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h2 { margin-top: 2em; font-size: 1.15em; }
p.sub { color: #555; font-size: 0.9em; margin: 0.2em 0 0.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.published td { background: #fff8e6; font-style: italic; }
"""

NUMERIC_COLUMNS = frozenset({"#", "value", "GFLOPs/fwd", "GFLOPs/sample", "steps", "CFG", "latency s"})


def render_html(tables: list[Table]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<title>flexgen leaderboard</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           "<h1>flexgen leaderboard</h1>",
           "<p>One table per (dataset, metric, protocol, detector sha256, reference statistics sha256, N, storage): "
           "numbers in different tables are not comparable. Published rows (shaded) are copied from papers.</p>"]
    if not tables:
        out.append("<p><em>No records.</em></p>")
    for table in tables:
        out += [f"<h2>{e(table.title)}</h2>", f'<p class="sub">{e(table.subtitle)}</p>', "<table>",
                "<tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>"]
        for rank, r in enumerate(table.rows, start=1):
            cells = "".join(f'<td class="num">{e(c)}</td>' if col in NUMERIC_COLUMNS else f"<td>{e(c)}</td>"
                            for col, c in zip(COLUMNS, row_cells(rank, r), strict=True))
            out.append(f'<tr class="{"published" if r.published else "measured"}">{cells}</tr>')
        out.append("</table>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# PNG: GFLOPs-per-forward vs metric scatter, one panel per table that has GFLOPs (PIL only)
# ---------------------------------------------------------------------------------------------------------------

MEASURED_COLOR = (31, 119, 180)
PUBLISHED_COLOR = (230, 120, 20)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 5 × 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _padded_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.12 if hi > lo else max(abs(lo) * 0.1, 1.0)
    return lo - pad, hi + pad


def _draw_panel(draw: Any, box: tuple[int, int, int, int], table: Table, font: Any) -> None:
    x0, y0, x1, y1 = box
    rows = [r for r in table.rows if r.gflops_per_forward is not None]
    draw.text((x0 + 4, y0 + 2), table.title, fill=(0, 0, 0), font=font)
    direction = "higher is better" if table.higher_is_better else "lower is better"
    draw.text((x0 + 4, y0 + 18), f"y: {table.key.metric.upper()} ({direction}) · x: GFLOPs per forward",
              fill=(90, 90, 90), font=font)
    # Plot area inside the panel, leaving room for the titles and the tick labels
    left, top, right, bottom = x0 + 56, y0 + 40, x1 - 12, y1 - 28
    if right - left < 20 or bottom - top < 20:
        return
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    xlo, xhi = _padded_range([r.gflops_per_forward for r in rows])
    ylo, yhi = _padded_range([r.value for r in rows])

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - xlo) / (xhi - xlo) * (right - left), bottom - (y - ylo) / (yhi - ylo) * (bottom - top))

    for t in nice_ticks(xlo, xhi):
        x, _ = px(t, ylo)
        draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
        draw.text((x, bottom + 6), f"{t:g}", fill=(0, 0, 0), font=font, anchor="mt")
    for t in nice_ticks(ylo, yhi):
        _, y = px(xlo, t)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.line((left + 1, y, right - 1, y), fill=(235, 235, 235))
        draw.text((left - 6, y), f"{t:g}", fill=(0, 0, 0), font=font, anchor="rm")
    for r in rows:
        x, y = px(r.gflops_per_forward, r.value)
        if r.published:     # hollow diamond
            draw.polygon([(x, y - 6), (x + 6, y), (x, y + 6), (x - 6, y)], outline=PUBLISHED_COLOR, width=2)
        else:               # filled disc
            draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=MEASURED_COLOR)
        label = r.model_name if r.method in ("", "baseline") else f"{r.model_name} {r.method}"
        if x + 8 + draw.textlength(label, font=font) <= right:
            draw.text((x + 8, y), label, fill=(40, 40, 40), font=font, anchor="lm")
        else:               # would run off the panel: label on the left of the point
            draw.text((x - 8, y), label, fill=(40, 40, 40), font=font, anchor="rm")


def _font(image_font: Any, size: int) -> Any:
    """DejaVu Sans when the system has it (Greek letters such as the α in PixArt-α), else PIL's built-in font."""
    try:
        return image_font.truetype("DejaVuSans.ttf", size)
    except OSError:         # font file not found: the built-in font draws Latin text, boxes for other glyphs
        return image_font.load_default(size=size)


def render_png(tables: list[Table], path: str | Path, size: tuple[int, int] = (1280, 720)) -> Path:
    """Write the scatter plot to `path` as a `size` (width, height) PNG; tables without GFLOPs are left out."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    if width < 100 or height < 100:
        raise ValueError(f"PNG size {width}x{height} is too small (at least 100x100)")
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(ImageFont, 12)
    # Legend across the top
    draw.ellipse((10, 10, 20, 20), fill=MEASURED_COLOR)
    draw.text((26, 9), "measured here", fill=(0, 0, 0), font=font)
    draw.polygon([(136, 9), (142, 15), (136, 21), (130, 15)], outline=PUBLISHED_COLOR, width=2)
    draw.text((150, 9), "published (not re-measured)", fill=(0, 0, 0), font=font)
    plotted = [t for t in tables if any(r.gflops_per_forward is not None for r in t.rows)]
    if not plotted:
        draw.text((width // 2, height // 2), "no rows with GFLOPs per forward", fill=(0, 0, 0), font=font,
                  anchor="mm")
    else:
        cols = math.ceil(math.sqrt(len(plotted)))
        nrows = math.ceil(len(plotted) / cols)
        cell_w, cell_h = width // cols, (height - 30) // nrows
        for i, table in enumerate(plotted):
            cx, cy = (i % cols) * cell_w, 30 + (i // cols) * cell_h
            _draw_panel(draw, (cx + 4, cy + 4, cx + cell_w - 4, cy + cell_h - 4), table, font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------------------------
# flexgen leaderboard
# ---------------------------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1280x720, got {text!r}")
    return int(width), int(height)


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"formats must be a comma-separated subset of {','.join(FORMATS)}, "
                                         f"got {text!r}")
    return formats


def add_leaderboard_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `flexgen leaderboard` to `parser` and set `func=leaderboard_main`; returns the parser."""
    parser.add_argument("--records", default="eval/records.jsonl", help="JSON Lines file of measured records "
                        "(a missing file means no measured rows)")
    parser.add_argument("--anchors", default="eval/anchors.json", help="published numbers; '' for none")
    parser.add_argument("--out", default="eval/leaderboard", help="output folder: leaderboard.{md,html,png}")
    parser.add_argument("--format", default=",".join(FORMATS), type=parse_formats,
                        help="comma-separated subset of md,html,png (default: all)")
    parser.add_argument("--png-size", default=(1280, 720), type=parse_size, metavar="WxH",
                        help="size of the scatter plot in pixels (default 1280x720)")
    parser.set_defaults(func=leaderboard_main)
    return parser


def leaderboard_main(args: argparse.Namespace) -> dict[str, Path]:
    """Read records and anchors, write the requested reports into args.out; returns {format: path}."""
    records: list[Record] = []
    records_path = Path(args.records)
    if records_path.exists():
        records += read_records(records_path)
    else:
        print(f"flexgen leaderboard: no records file at {records_path}; published anchors only")
    if args.anchors:
        records += load_anchors(args.anchors)
    tables = build_tables(records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    formats = parse_formats(args.format) if isinstance(args.format, str) else args.format
    if "md" in formats:
        written["md"] = out / "leaderboard.md"
        written["md"].write_text(render_markdown(tables), encoding="utf-8")
    if "html" in formats:
        written["html"] = out / "leaderboard.html"
        written["html"].write_text(render_html(tables), encoding="utf-8")
    if "png" in formats:
        size = parse_size(args.png_size) if isinstance(args.png_size, str) else args.png_size
        written["png"] = render_png(tables, out / "leaderboard.png", size)
    n_published = sum(r.published for r in records)
    print(f"{len(records) - n_published} measured + {n_published} published rows in {len(tables)} tables")
    for path in written.values():
        print(f"wrote {path}")
    return written
