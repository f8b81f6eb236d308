"""What the web tool does, without HTTP: the expert's spec, painted regions, previews,
accepted and rejected candidates, and batch runs, all through diag's own generate API.

The out folder is a ``diag generate`` folder. Accepting a candidate adds it to the spec as a
pick (``defects[i].picks``: its image and seed) and makes that one planned sample with
:func:`diag.generate.run_spec` (``ids=[...]``), so its files and manifest line are exactly
what ``diag generate`` writes, and the saved spec reproduces it. Besides the generate files
the tool keeps::

    OUT/regions/<set>/<image stem>.png   painted regions (0/255), default.png for all images
    OUT/curation.jsonl                   every accept and reject, one JSON line each
    OUT/rejected/images|masks/           rejected candidates (data for a quality filter)
    OUT/ui.log                           the server's log (errors with their tracebacks)
    OUT/.ui/candidates/                  previews not yet accepted or rejected
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diag.data import Sample
from diag.errors import DiagError, where
from diag.files import copy_file
from diag.imageio import encode_png, read_mask, write_image, write_mask

REGIONS = "regions"
CURATION = "curation.jsonl"
REJECTED = "rejected"
CANDIDATES = ".ui/candidates"
DEFAULT_MODEL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
TEXT_KINDS = ("diffusion",)  # generators that read the prompt
REGION_KINDS = ("real-masks", "painted", "painted-area", "shapes")
MAX_CANDIDATES = 8
SET_RE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass
class Candidate:
    """A previewed sample: which defect, image and seed, under which spec."""

    id: str
    defect: str
    image: str
    seed: int
    spec: dict[str, Any]  # the spec it was made with (paths absolute)
    files: dict[str, str]  # image/mask/overlay -> path relative to OUT
    region: dict[str, Any] | None = None
    state: str = "new"  # new, accepted, rejected


@dataclass
class Job:
    """A background task (preview, accept, batch run) the page polls."""

    id: str
    kind: str
    total: int = 0
    done: float = 0  # finished units; a model call in progress adds its fraction of steps
    state: str = "queued"  # queued, running, done, failed
    message: str = ""
    result: Any = None
    started: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def view(self) -> dict[str, Any]:
        with self.lock:
            return {"id": self.id, "kind": self.kind, "total": self.total, "done": self.done,
                    "state": self.state, "message": self.message, "result": self.result}


def default_generator() -> dict[str, Any]:
    """SDXL inpainting when its weights are in the local Hugging Face cache, else memseg
    (no weights needed); the page can switch to any generator or model folder."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(DEFAULT_MODEL, "model_index.json")
    except Exception:  # noqa: BLE001 - no hub library or no cache: fall back
        hit = None
    if isinstance(hit, str):
        return {"kind": "diffusion", "model": DEFAULT_MODEL, "steps": 30, "guidance_scale": 20,
                "strength": 0.99}
    return {"kind": "memseg"}


class Session:
    """The web tool's state. Every method that changes files holds ``self.lock``; generation
    runs on one worker thread (the page never waits on it)."""

    def __init__(self, out: Path, data: Path | None = None, layout: str = "auto",
                 spec_path: Path | None = None, device: str = "auto",
                 log: Callable[[str], None] | None = None) -> None:
        from diag.generate.spec import load_spec

        self.out = Path(out).resolve()
        self.device = device
        self.log = log or (lambda m: None)
        self.lock = threading.RLock()
        self.candidates: dict[str, Candidate] = {}
        self.jobs: dict[str, Job] = {}
        self._generator: tuple[str, Any] | None = None
        if spec_path is not None:
            spec = load_spec(spec_path, notes=False)
            data_dict = spec.to_dict()
            if data is not None and Path(spec.dataset.root).resolve() != Path(data).resolve():
                raise DiagError(f"--spec {where(spec_path)} reads dataset.root "
                                f"{spec.dataset.root}, not --data {data}: give one of them")
            self.data = Path(spec.dataset.root).resolve()
            self.spec = self._normalise(data_dict)
        else:
            if data is None:
                raise DiagError("diag ui needs --data FOLDER (the dataset) or --spec SPEC.yaml")
            self.data = Path(data).resolve()
            self.spec = {"dataset": {"root": str(self.data), "layout": layout},
                         "defects": [{"name": "defect", "prompt": "", "negative_prompt": "",
                                      "count": 10, "regions": self._regions("painted", "defect")}],
                         "generator": default_generator(), "seed": 0, "device": device}
        if not self.data.is_dir():
            raise DiagError(f"--data {where(self.data)} is not a folder: give the dataset folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self._samples: dict[str, list[Sample]] | None = None

    # ------------------------------------------------------------------- jobs
    def submit(self, kind: str, work: Callable[[Job], Any]) -> Job:
        """Queue ``work(job)`` on the generation thread; the page polls :meth:`job`."""
        import queue

        job = Job(secrets.token_hex(6), kind)
        with self.lock:
            self.jobs[job.id] = job
            if not hasattr(self, "_queue"):
                self._queue: queue.Queue[tuple[Job, Callable[[Job], Any]]] = queue.Queue()
                threading.Thread(target=self._work, name="diag-ui-worker", daemon=True).start()
        self._queue.put((job, work))
        return job

    def _work(self) -> None:
        import time
        import traceback

        while True:
            job, work = self._queue.get()
            with job.lock:
                job.state, job.started = "running", time.time()
            try:
                result = work(job)
            except DiagError as exc:
                with job.lock:
                    job.state, job.message = "failed", str(exc)
                self.log(f"{job.kind} failed: {exc}")
            except Exception as exc:  # noqa: BLE001 - a generator error must not stop the tool
                with job.lock:
                    job.state = "failed"
                    job.message = (f"{job.kind} failed: {type(exc).__name__}: "
                                   f"{' '.join(str(exc).split())[:300]} (details in "
                                   f"{self.out / 'ui.log'})")
                self.log(f"{job.kind} failed:\n{traceback.format_exc()}")
            else:
                with job.lock:
                    job.state, job.result = "done", result
                    job.message = f"{job.kind} done in {time.time() - job.started:.1f} s"

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise DiagError(f"no job '{job_id}' (the server restarted?)")
        return job

    # ----------------------------------------------------------------- the spec
    def _regions(self, kind: str, region_set: str) -> dict[str, Any]:
        path = str(self.out / REGIONS / region_set)
        return {"real-masks": {"source": "real-masks", "flip": True, "shift": 0.05},
                "painted": {"source": "drawn", "path": path, "mode": "as-is"},
                "painted-area": {"source": "drawn", "path": path, "mode": "area"},
                "shapes": {"source": "shapes"}}[kind]

    def _normalise(self, data: dict[str, Any]) -> dict[str, Any]:
        """Each defect type carries its own regions (the top level's merged in)."""
        data = copy.deepcopy(data)
        top = data.pop("regions", None)
        for d in data["defects"]:
            if d.get("regions") is None and top is not None:
                d["regions"] = copy.deepcopy(top)
        return data

    def parsed(self, data: dict[str, Any] | None = None) -> Any:
        """The spec validated (a :class:`~diag.generate.spec.Spec`); a bad one is a DiagError."""
        from diag.generate.spec import parse_spec

        data = copy.deepcopy(data if data is not None else self.spec)
        for d in data.get("defects", []):
            if isinstance(d, dict) and d.get("regions") is None:
                d.pop("regions", None)
        spec = parse_spec(data, "the page's spec", notes=False)
        root = Path(spec.dataset.root).resolve()
        if root != self.data and self.data not in root.parents:
            raise DiagError(f"dataset.root {root} is outside the data folder this page serves "
                            f"({self.data}): restart diag ui with --data {root}")
        return spec

    def view_spec(self) -> dict[str, Any]:
        """The spec for the page: each defect's region as one of REGION_KINDS and a set."""
        data = copy.deepcopy(self.spec)
        for d in data["defects"]:
            d["region_kind"], d["region_set"] = self._region_kind(d.get("regions"), d["name"])
        return data

    def _region_kind(self, regions: dict[str, Any] | None, name: str) -> tuple[str, str]:
        if not regions or regions.get("source", "real-masks") == "real-masks":
            return "real-masks", name
        if regions.get("source") == "shapes" and not regions.get("path"):
            return "shapes", name
        path = Path(str(regions.get("path", "")))
        if regions.get("source") == "drawn" and path.parent == self.out / REGIONS:
            return ("painted-area" if regions.get("mode") == "area" else "painted"), path.name
        return "custom", name

    def update_spec(self, page: dict[str, Any]) -> dict[str, Any]:
        """Take the page's defect types and generator settings; returns the validated spec
        (an invalid one is kept, so the page can show the error and keep the typing)."""
        with self.lock:
            data = copy.deepcopy(self.spec)
            old = {d["name"]: d for d in data["defects"]}
            defects = []
            for d in page.get("defects", []):
                name = str(d.get("name", "")).strip()
                entry = {"name": name, "prompt": str(d.get("prompt", "")),
                         "negative_prompt": str(d.get("negative_prompt", "")),
                         "count": d.get("count", 10)}
                kind, region_set = d.get("region_kind"), str(d.get("region_set") or name)
                if kind == "custom" or kind is None:
                    entry["regions"] = old.get(name, {}).get("regions")
                elif kind in REGION_KINDS:
                    check_set_name(region_set)
                    entry["regions"] = self._regions(kind, region_set)
                else:
                    raise DiagError(f"region kind '{kind}': use one of {', '.join(REGION_KINDS)}")
                if old.get(name, {}).get("picks"):
                    entry["picks"] = old[name]["picks"]
                defects.append(entry)
            if defects:
                data["defects"] = defects
            if isinstance(page.get("generator"), dict):
                data["generator"] = {**data.get("generator", {}), **page["generator"]}
            for key in ("seed", "device"):
                if key in page:
                    data[key] = page[key]
            self.spec = data
            self.parsed()
            return self.view_spec()

    def spec_yaml(self) -> str:
        return self.parsed().to_yaml()

    def save_spec(self) -> Path:
        """Write the spec to ``OUT/spec.yaml``, the file ``diag generate`` reads; refused when
        the folder holds samples another spec made."""
        from diag.generate.runner import SPEC_FILE, claim_spec

        with self.lock:
            spec = self.parsed()
            claim_spec(spec, self.out)
            self.log(f"spec saved to {self.out / SPEC_FILE}")
            return self.out / SPEC_FILE

    def load_spec_text(self, text: str) -> dict[str, Any]:
        """Read a spec YAML (paths relative to OUT) and make it the page's spec."""
        import yaml

        from diag.generate.spec import resolve_paths

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DiagError(f"the spec file is not valid YAML ({' '.join(str(exc).split())[:160]})"
                            ": fix it and load it again") from None
        if not isinstance(data, dict):
            raise DiagError("the spec file must be a mapping with dataset, defects, generator")
        data = resolve_paths(data, self.out)
        from diag.generate.spec import parse_spec

        spec = parse_spec(data, "the loaded spec", notes=False)
        with self.lock:
            old = self.spec
            self.spec = self._normalise(spec.to_dict())
            try:
                self.parsed()
            except DiagError:
                self.spec = old
                raise
            self._samples = None
            return self.view_spec()

    # --------------------------------------------------------------- the data
    def samples(self) -> dict[str, list[Sample]]:
        """The dataset's defect-free images and real defects (the spec's split)."""
        with self.lock:
            if self._samples is None:
                spec = self.parsed()
                samples = spec.dataset.load()
                self._samples = {"negatives": [s for s in samples if not s.label],
                                 "positives": [s for s in samples if s.label]}
            return self._samples

    def sample(self, sample_id: str) -> Sample:
        for group in self.samples().values():
            for s in group:
                if s.id == sample_id:
                    return s
        raise DiagError(f"no image '{sample_id}' in the dataset {where(self.data)}")

    def region_sets(self) -> dict[str, list[str]]:
        """Painted region sets and the image stems painted in each (``default``: all)."""
        root = self.out / REGIONS
        if not root.is_dir():
            return {}
        return {d.name: sorted(p.stem for p in d.glob("*.png"))
                for d in sorted(root.iterdir()) if d.is_dir()}

    def region_file(self, region_set: str, image: str) -> Path:
        check_set_name(region_set)
        stem = "default" if image == "default" else self.sample(image).path.stem
        return self.out / REGIONS / region_set / f"{stem}.png"

    def save_region(self, region_set: str, image: str, png: bytes) -> int:
        """Save a painted region (a PNG at the image's size; painted = alpha or white above
        half); an empty one removes the file. Returns the painted pixel count."""
        from PIL import Image

        path = self.region_file(region_set, image)
        try:
            img = Image.open(io.BytesIO(png))
            img.load()
        except Exception:  # noqa: BLE001 - any decoder failure is bad input
            raise DiagError("the painted region is not a readable PNG: paint again") from None
        arr = np.asarray(img.convert("RGBA"))
        mask = (arr[..., 3] >= 128) & (arr[..., :3].max(axis=2) >= 128)
        if image != "default":
            h, w = self.sample(image).size
            if mask.shape != (h, w):
                raise DiagError(f"the painted region is {mask.shape[1]}x{mask.shape[0]} but "
                                f"the image is {w}x{h}: reload the image and paint again")
        with self.lock:
            if not mask.any():
                path.unlink(missing_ok=True)
                self.log(f"region removed: {path}")
                return 0
            write_mask(path, mask)
            self.log(f"region saved: {path} ({int(mask.sum())} px)")
        return int(mask.sum())

    # ------------------------------------------------------------ generating
    def generator(self, spec: Any) -> Any:
        """The spec's generator, built once and kept while its settings stay the same."""
        from diag.device import resolve_device
        from diag.generators.base import make_generator

        device = resolve_device(self.device if self.device != "auto" else spec.device)
        from diag.config import to_dict

        key = json.dumps([spec.generator.kind, to_dict(spec.generator.params), device],
                         sort_keys=True, default=str)
        if self._generator is None or self._generator[0] != key:
            self._generator = None  # free the old model first
            self._generator = (key, make_generator(spec.generator.kind, spec.generator.params,
                                                   device, "the page's generator"))
        return self._generator[1]

    def preview(self, job: Job, defect: str, image: str, n: int = 4,
                seeds: list[int] | None = None) -> list[dict[str, Any]]:
        """Generate candidates of ``defect`` on ``image`` (new random seeds unless given)."""
        from diag.generate import generate_one, load_inputs
        from diag.generate.plan import PlanItem

        spec = self.parsed()
        d = next((x for x in spec.defects if x.name == defect), None)
        if d is None:
            raise DiagError(f"no defect type '{defect}': add it first")
        if spec.generator.kind in TEXT_KINDS and not d.prompt.strip():
            raise DiagError(f"the description (prompt) of '{defect}' is empty: describe the "
                            "defect in a few words")
        seeds = list(seeds or [secrets.randbelow(2**31)
                            for _ in range(max(1, min(n, MAX_CANDIDATES)))])
        if len(seeds) > MAX_CANDIDATES:
            raise DiagError(f"{len(seeds)} seeds: preview at most {MAX_CANDIDATES} at a time")
        sample = self.sample(image)
        rs = d.regions or spec.regions
        if rs is not None and rs.source == "drawn" and rs.path and Path(rs.path).parent == (
                self.out / REGIONS):
            folder = Path(rs.path)
            if not any((folder / f"{stem}.png").is_file()
                       for stem in (sample.path.stem, "default")):
                raise DiagError(f"no region painted for '{defect}' on {image} (region set "
                                f"'{folder.name}'): paint one on this image or on all images, "
                                "and save it")
        inputs = load_inputs(_only(spec, defect))
        source = next((s for s in inputs.candidates.get(defect, []) if s.id == image), None)
        if source is None:
            self.sample(image)  # an unknown id says so
            raise DiagError(f"no region for '{defect}' on {image}: paint one on this image (or "
                            "on all images), or choose real masks or random shapes")
        gen = self.generator(spec)
        snapshot = spec.to_dict()
        job.total = len(seeds)
        made = []
        for j, seed in enumerate(seeds):
            item = PlanItem(-1, f"{defect}_preview", defect, d.prompt, d.negative_prompt,
                            int(seed), source)

            def step(i: int, n: int, j: int = j) -> None:
                with job.lock:
                    job.done = j + min(i / max(n, 1), 1.0)

            gen.on_step = step
            try:
                m = generate_one(gen, item, inputs)
            finally:
                gen.on_step = None
            cid = secrets.token_hex(6)
            files = self._write_candidate(cid, m)
            cand = Candidate(cid, defect, image, int(seed), snapshot, files, m.record.get("region"))
            with self.lock:
                self.candidates[cid] = cand
            made.append(self.view_candidate(cand))
            with job.lock:
                job.done = j + 1
        return made

    def _write_candidate(self, cid: str, made: Any) -> dict[str, str]:
        from diag.generate.sheet import overlay

        folder = self.out / CANDIDATES
        files = {"image": f"{CANDIDATES}/{cid}.png", "mask": f"{CANDIDATES}/{cid}_mask.png",
                 "overlay": f"{CANDIDATES}/{cid}_overlay.png"}
        write_image(folder / f"{cid}.png", made.image)
        write_mask(folder / f"{cid}_mask.png", made.mask)
        write_image(folder / f"{cid}_overlay.png", overlay(made.image, made.mask))
        return files

    def view_candidate(self, c: Candidate) -> dict[str, Any]:
        return {"id": c.id, "defect": c.defect, "image": c.image, "seed": c.seed,
                "state": c.state, "files": c.files}

    def _candidate(self, cid: str) -> Candidate:
        c = self.candidates.get(cid)
        if c is None:
            raise DiagError(f"no candidate '{cid}' (the server restarted?): preview again")
        if c.state != "new":
            raise DiagError(f"this candidate is already {c.state}")
        return c

    def accept(self, job: Job, cid: str) -> dict[str, Any]:
        """Add the candidate to the spec as a pick and make it into the out folder exactly as
        ``diag generate`` does; checks the result is the previewed image."""
        from diag.generate import run_spec
        from diag.generate.plan import pick_id
        with self.lock:  # held briefly: the page stays answered while the sample is made
            c = self._candidate(cid)
            if _settings(self.parsed().to_dict(), c.defect) != _settings(c.spec, c.defect):
                raise DiagError("the settings changed since this preview (prompt, regions or "
                                "generator): preview again and accept the new candidate")
            data = copy.deepcopy(self.spec)
            entry = next(d for d in data["defects"] if d["name"] == c.defect)
            entry["picks"] = [*(entry.get("picks") or []), {"image": c.image, "seed": c.seed}]
            spec = self.parsed(data)
            sid = pick_id(c.defect, len(entry["picks"]) - 1)
            c.state = "accepting"
        job.total = 1
        try:
            run_spec(spec, self.out, ids=[sid], generator=self.generator(spec), progress=False)
        except BaseException:
            c.state = "new"
            raise
        with self.lock:
            # the page's later edits are kept; this type gains the pick
            now = next((d for d in self.spec["defects"] if d["name"] == c.defect), None)
            if now is not None:
                now["picks"] = entry["picks"]
            c.state = "accepted"
            same = (self.out / "images" / f"{sid}.png").read_bytes() == (
                self.out / c.files["image"]).read_bytes()
            self._curate("accepted", c, {"id": sid, "same_as_preview": same})
        job.done = 1
        self.log(f"accepted {sid} ({c.image}, seed {c.seed})")
        return {"id": sid, "candidate": cid, "same_as_preview": same,
                "image": f"images/{sid}.png", "mask": f"masks/{sid}.png"}

    def reject(self, cid: str) -> dict[str, Any]:
        """Keep the rejected candidate under ``OUT/rejected`` and record why it exists."""
        with self.lock:
            c = self._candidate(cid)
            name = f"{c.defect}_{Path(c.image).name}_{c.seed}.png"
            for kind, sub in (("image", "images"), ("mask", "masks")):
                copy_file(self.out / c.files[kind], self.out / REJECTED / sub / name)
            c.state = "rejected"
            self._curate("rejected", c, {"image_file": f"{REJECTED}/images/{name}",
                                         "mask_file": f"{REJECTED}/masks/{name}"})
            self.log(f"rejected {c.defect} on {c.image}, seed {c.seed}")
            return {"candidate": cid, "state": "rejected"}

    def _curate(self, decision: str, c: Candidate, extra: dict[str, Any]) -> None:
        d = next(x for x in c.spec["defects"] if x["name"] == c.defect)
        line = {"decision": decision, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "defect": c.defect, "source_id": c.image, "seed": c.seed,
                "prompt": d.get("prompt", ""), "negative_prompt": d.get("negative_prompt", ""),
                "generator": c.spec["generator"], "region": c.region, **extra}
        append_line(self.out / CURATION, line)

    def run_batch(self, job: Job) -> dict[str, Any]:
        """Run the whole spec into the out folder (resuming), then draw a contact sheet."""
        from diag.generate import run_spec
        from diag.generate.sheet import save_contact_sheet

        with self.lock:
            spec = self.parsed()
            gen = self.generator(spec)
        job.total = spec.total

        def tick(record: dict[str, Any]) -> None:
            with job.lock:
                job.done += 1

        summary = run_spec(spec, self.out, generator=gen, progress=False, on_sample=tick)
        with job.lock:
            job.done = summary.generated + summary.skipped
        sheet = self.out / "sheet.png"
        save_contact_sheet([self.out], sheet, n=8)
        self.log(f"batch: {summary.generated} generated, {summary.skipped} already done")
        return {"generated": summary.generated, "skipped": summary.skipped,
                "planned": summary.planned, "sheet": "sheet.png"}

    def accepted(self) -> list[dict[str, Any]]:
        """The samples in the out folder (its manifest), newest last."""
        from diag.data.manifest import read_manifest

        return [{"id": r["id"], "defect": r.get("defect"), "seed": r.get("seed"),
                 "image": r.get("image"), "mask": r.get("mask")}
                for r in read_manifest(self.out)]


def _settings(spec: dict[str, Any], defect: str) -> Any:
    """What a candidate of ``defect`` depends on: the dataset, the generator and the defect
    type's prompts and regions (not counts, picks, other types or the device)."""
    from diag.generate.runner import spec_fingerprint

    fp = spec_fingerprint(spec)
    return [fp.get("dataset"), fp.get("generator"), fp.get("regions"),
            [d for d in fp.get("defects", []) if d.get("name") == defect]]


def _only(spec: Any, defect: str) -> Any:
    """The spec with just one defect type (previews read only its regions)."""
    out = copy.copy(spec)
    out.defects = [d for d in spec.defects if d.name == defect]
    return out


def check_set_name(name: str) -> None:
    if not name or not set(name) <= SET_RE_CHARS or name.startswith("."):
        raise DiagError(f"region set '{name}': use letters, digits, '_', '-' or '.' (it names a "
                        "folder)")


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a line is whole or absent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_region(path: Path) -> bytes:
    """A region file as a PNG (0/255)."""
    return encode_png(read_mask(path).astype(np.uint8) * 255)


