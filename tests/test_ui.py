"""``diag ui`` end to end in a real headless Chromium (Debian's, driven by Playwright): paint a
region, describe a defect, preview with memseg and with the tiny diffusion model, accept one
candidate, reject one, save the spec, run the batch; then the files on disk, the saved spec
reproducing the accepted image through ``diag generate``, refused paths, and bad input shown
in the page while the server keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from diag.data.ref import DatasetRef
from diag.imageio import read_mask

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "ui.png"


def _chromium() -> str | None:
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                        "(pip install -e '.[dev]')")
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium "
                    "chromium-driver; make test does it when run as root)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundled example."""
    root = tmp_path_factory.mktemp("clean") / "magnetic_tile"
    shutil.copytree(REPO / "examples" / "magnetic_tile", root)
    return root


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled example plus one unreadable defect-free image (its header is whole, its
    pixels cut off) in the training split."""
    root = tmp_path_factory.mktemp("data") / "magnetic_tile"
    shutil.copytree(REPO / "examples" / "magnetic_tile", root)
    free = root / "MT_Free" / "Imgs"
    mask = next(free.glob("*.png"))
    jpeg = mask.with_suffix(".jpg").read_bytes()
    for i in range(50):
        (free / f"zz_broken{i}.jpg").write_bytes(jpeg[:len(jpeg) // 3])
        shutil.copy(mask, free / f"zz_broken{i}.png")
        ids = {s.id for s in DatasetRef(root=str(root), layout="magnetic-tile").load()}
        if f"MT_Free/zz_broken{i}" in ids:
            return root
        (free / f"zz_broken{i}.jpg").unlink()
        (free / f"zz_broken{i}.png").unlink()
    raise AssertionError("no name put the broken image in the training split")


class Server:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "diag", "ui", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env)
        line = self.proc.stdout.readline()
        assert line.startswith("diag ui: http://"), line + self.proc.stdout.read()
        self.url = line.split()[2]

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _wait_status(page, text: str, timeout: float = 180_000) -> None:
    page.wait_for_function("t => document.querySelector('#status').textContent.includes(t)",
                           arg=text, timeout=timeout)


def _message(page) -> str:
    page.wait_for_selector("#message:not([hidden])", timeout=120_000)
    text = page.inner_text("#message-text")
    page.click("#message-close")
    return text


def _wait_candidates(page, n: int) -> None:
    """Wait for ``n`` candidate cards, failing at once with the page's message if one shows."""
    page.wait_for_function(f"() => document.querySelectorAll('.candidate').length == {n} || "
                           "!document.querySelector('#message').hidden", timeout=300_000)
    assert page.locator(".candidate").count() == n, page.inner_text("#message-text")


def _paint(page) -> tuple[float, float, float, float]:
    """A brush stroke and a rectangle on the mask canvas; returns the rectangle in image
    pixels."""
    box = page.locator("#mask-canvas").bounding_box()
    size = page.evaluate("() => [document.querySelector('#mask-canvas').width, "
                         "document.querySelector('#mask-canvas').height]")
    sx, sy = size[0] / box["width"], size[1] / box["height"]
    x0, y0 = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(x0 + k * box["width"] * 0.03, y0 + k * box["height"] * 0.02)
    page.mouse.up()
    page.click("#tool-rect")
    a = (box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.55)
    b = (box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.7)
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=4)
    page.mouse.up()
    return ((a[0] - box["x"]) * sx, (a[1] - box["y"]) * sy, (b[0] - box["x"]) * sx,
            (b[1] - box["y"]) * sy)


def _set_field(page, selector: str, value: str) -> None:
    page.fill(selector, value)
    page.dispatch_event(selector, "change")


def test_ui_end_to_end(browser, data: Path, tiny_model: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "ui"
    server = Server("--data", str(data), "--layout", "magnetic-tile", "--out", str(out))
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        outside: list[str] = []
        page.on("request", lambda r: outside.append(r.url)
                if not r.url.startswith((server.url, "data:", "blob:")) else None)
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']")

        # paint a region on the first defect-free image and save it
        first = page.locator("#thumbs .thumb").first
        stem = first.get_attribute("data-id").rsplit("/", 1)[1]
        first.click()
        page.wait_for_function("() => document.querySelector('#current').textContent.includes('x')")
        rect = _paint(page)
        page.click("#save-region")
        _wait_status(page, "region saved")
        region = read_mask(out / "regions" / "defect" / f"{stem}.png")
        cx, cy = int((rect[0] + rect[2]) / 2), int((rect[1] + rect[3]) / 2)
        assert region[cy, cx] and not region[-1, -1] and not region[0, 0]
        assert region[int(rect[1]) + 2: int(rect[3]) - 2, int(rect[0]) + 2: int(rect[2]) - 2].all()
        painted = int(region.sum())

        # describe the defect type (count 2 for the batch later)
        card = ".defect"
        _set_field(page, f"{card} .d-name", "crack")
        _set_field(page, f"{card} .d-prompt", "a thin dark crack in the grey surface")
        _set_field(page, f"{card} .d-count", "2")
        page.wait_for_function("() => document.querySelector('#spec-yaml').textContent"
                               ".includes('thin dark crack')")

        # preview with memseg (the default without SDXL weights), then with the tiny model
        assert page.input_value("#gen-kind") == "memseg"
        _set_field(page, "#preview-n", "2")
        page.click("#preview")
        _wait_candidates(page, 2)
        page.select_option("#gen-kind", "diffusion")
        page.dispatch_event("#gen-kind", "change")
        _set_field(page, "#gen-model", str(tiny_model))
        _set_field(page, "#gen-steps", "2")
        _set_field(page, "#gen-guidance", "5")
        _set_field(page, "#gen-strength", "0.99")
        page.click("#preview")
        _wait_candidates(page, 4)

        # a memseg candidate cannot be accepted under the diffusion settings: said in the page
        page.locator(".candidate").nth(3).locator(".accept").click()
        assert "settings changed since this preview" in _message(page)
        # accept the newest diffusion candidate, reject a memseg one
        page.locator(".candidate").nth(0).locator(".accept").click()
        page.wait_for_selector(".candidate.accepted", timeout=180_000)
        page.locator(".candidate").nth(2).locator(".reject").click()
        page.wait_for_selector(".candidate.rejected")
        accepted_seed = int(page.locator(".candidate.accepted .meta").inner_text()
                            .split("seed ")[1].split(" ")[0])

        # save the spec, run the batch (2 counted samples + the pick)
        page.click("#save-spec")
        page.wait_for_function("() => document.querySelector('#message-text').textContent"
                               ".includes('spec saved')")
        page.click("#message-close")
        page.click("#run-batch")
        page.wait_for_function("() => document.querySelector('#batch img') || "
                               "!document.querySelector('#message').hidden", timeout=300_000)
        assert page.locator("#batch img").count(), page.inner_text("#message-text")
        assert "2 generated, 1 already done, of 3" in page.inner_text("#batch")
        page.wait_for_function("() => document.querySelector('#batch img').naturalWidth > 0")
        # the saved spec reproduces the whole set through diag generate
        copy = tmp_path / "copy"
        code, _, err = cli("generate", out / "spec.yaml", "--out", copy)
        assert code == 0, err
        made = sorted(p.name for p in (out / "images").glob("*.png"))
        assert made == ["crack_00000.png", "crack_00001.png", "crack_p00000.png"]
        for name in made:
            for sub in ("images", "masks"):
                assert (copy / sub / name).read_bytes() == (out / sub / name).read_bytes(), name
        page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
        if os.environ.get("DIAG_UPDATE_SCREENSHOTS"):
            shutil.copy(tmp_path / "ui.png", SCREENSHOT)

        # bad input: shown in the page, never a stack trace, and the server keeps serving
        _set_field(page, f"{card} .d-prompt", "")
        page.click("#preview")
        assert "description (prompt) of 'crack' is empty" in _message(page)
        _set_field(page, f"{card} .d-prompt", "a thin dark crack in the grey surface")
        page.locator("#thumbs .thumb").nth(1).click()
        page.wait_for_timeout(300)
        page.click("#preview")
        assert "no region painted for 'crack'" in _message(page)
        second = page.locator("#thumbs .thumb").nth(1).get_attribute("data-id").rsplit("/", 1)[1]
        # start that image's region from a real defect's mask
        page.click("#tab-positives")
        page.wait_for_function("() => document.querySelector('#page').textContent.includes('(8)')")
        page.locator("#thumbs .thumb").first.click()
        page.wait_for_function("() => document.querySelector('#current').textContent"
                               ".includes('view only')")
        page.click("#from-mask")
        _wait_status(page, "placed")
        page.click("#save-region")
        _wait_status(page, "region saved")
        assert read_mask(out / "regions" / "defect" / f"{second}.png").any()
        page.click("#tab-negatives")
        # the batch's samples were planned over the old regions: a rerun says so
        page.click("#run-batch")
        assert "changed since its samples were made" in _message(page)
        _set_field(page, "#gen-model", str(tmp_path / "no-such-model"))
        page.locator("#thumbs .thumb").first.click()
        page.wait_for_timeout(300)
        page.click("#preview")
        text = _message(page)
        assert "no-such-model" in text and "Traceback" not in text
        # the adapter field reaches the spec: a folder without an adapter is one line
        _set_field(page, "#gen-adapter", str(tmp_path))
        text = _message(page)
        assert "holds no pytorch_lora_weights.safetensors" in text and "Traceback" not in text
        assert server.get("/api/state")[0] == 200
        assert not errors, errors
        assert not outside, outside  # nothing loaded from anywhere else
    finally:
        server.stop()

    # the files: a generate folder whose pick has the fields diag generate writes
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["crack_00000", "crack_00001", "crack_p00000"]
    pick = next(r for r in records if r["id"] == "crack_p00000")
    assert set(pick) == set(records[0]) and pick["seed"] == accepted_seed
    assert pick["source_id"].endswith(stem)
    mask = read_mask(out / pick["mask"])
    assert np.array_equal(mask, region) and int(mask.sum()) == painted
    curation = [json.loads(x) for x in (out / "curation.jsonl").read_text().splitlines()]
    assert [c["decision"] for c in curation] == ["accepted", "rejected"]
    assert curation[0]["id"] == "crack_p00000" and curation[0]["same_as_preview"]
    assert (out / curation[1]["image_file"]).is_file() and (out / curation[1]["mask_file"]).is_file()
    assert (out / "sheet.png").is_file()
    spec_text = (out / "spec.yaml").read_text()
    assert "picks:" in spec_text and str(accepted_seed) in spec_text

    # with more regions painted since, the saved spec still reproduces the pick exactly
    again = tmp_path / "again"
    code, _, err = cli("generate", out / "spec.yaml", "--out", again, "--set",
                       "defects.0.count=0")
    assert code == 0, err
    for name in (pick["image"], pick["mask"]):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_unreadable_image_is_a_message(browser, broken: Path, tmp_path: Path) -> None:
    server = Server("--data", str(broken), "--layout", "magnetic-tile", "--out",
                    str(tmp_path / "ui"))
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#filter", "zz_broken")
        page.wait_for_function("() => document.querySelectorAll('#thumbs .thumb').length == 1")
        page.wait_for_selector("#thumbs .thumb.broken")  # its thumbnail says so
        page.locator("#thumbs .thumb").first.click()
        text = _message(page)
        assert "zz_broken" in text and "corrupt" in text and "Traceback" not in text
        assert server.get("/api/state")[0] == 200
    finally:
        server.stop()


def test_refuses_paths_outside_its_folders(data: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    shutil.copy(next((data / "MT_Free" / "Imgs").glob("*.png")), secret)
    out = tmp_path / "ui"
    server = Server("--data", str(data), "--layout", "magnetic-tile", "--out", str(out),
                    "--max-upload-mb", "1")
    try:
        inside = next((data / "MT_Free" / "Imgs").glob("*.jpg")).relative_to(data)
        assert server.get(f"/files/data/{inside}")[0] == 200
        for path in ("/files/out/../secret.png", "/files/out/%2e%2e/secret.png",
                     f"/files/data/..%2F..%2F{secret.parent.name}/secret.png",
                     f"/files/out/{secret}", "/files/data//etc/passwd",
                     "/static/../../../../etc/passwd"):
            status, body = server.get(path)
            assert status in (403, 404), (path, status)
            assert b"PNG" not in body and b"root:" not in body
        status, body = server.get("/files/out/..%2Fsecret.png")
        assert status == 403 and b"outside the folders" in body
        # writes stay in out: a region set name cannot climb out of it
        req = urllib.request.Request(server.url + "api/region", method="POST",
                                     data=json.dumps({"set": "../../x", "image": "default",
                                                      "png": "data:image/png;base64,"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=30)
        assert exc.value.code == 422 and b"region set" in exc.value.read()
        # other hosts (DNS rebinding) and non-JSON posts are refused; big uploads too
        req = urllib.request.Request(server.url + "api/state", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=30)
        assert exc.value.code == 403
        req = urllib.request.Request(server.url + "api/save", method="POST", data=b"a=1",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=30)
        assert exc.value.code == 415
        req = urllib.request.Request(server.url + "api/region", method="POST",
                                     data=json.dumps({"png": "x" * 2_000_000}).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=30)
        assert exc.value.code == 413 and b"--max-upload-mb" in exc.value.read()
        assert server.get("/api/state")[0] == 200
    finally:
        server.stop()
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_cli_errors_are_one_line(tmp_path: Path, cli) -> None:
    code, _, err = cli("ui", "--out", tmp_path / "o")
    assert code == 2 and "needs --data" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("ui", "--data", tmp_path / "missing", "--out", tmp_path / "o")
    assert code == 2 and "missing" in err
    (tmp_path / "f").write_text("x")
    code, _, err = cli("ui", "--data", REPO / "examples" / "magnetic_tile", "--out",
                       tmp_path / "f")
    assert code == 2 and "is a file" in err
    time.sleep(0)


def _post(server: Server, path: str, body: dict) -> dict:
    req = urllib.request.Request(server.url + path.lstrip("/"), method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_kill_9_during_the_batch_then_rerun(data: Path, tmp_path: Path) -> None:
    """kill -9 the server while its batch runs, start it again on the same folder and run the
    batch again: the folder ends as `diag generate` makes it, nothing lost or doubled."""
    from diag.data.manifest import read_manifest

    spec = {"dataset": {"layout": "magnetic-tile", "root": str(data), "split": "train"},
            "regions": {"source": "real-masks"},
            "defects": [{"name": "crack", "prompt": "a crack", "count": 12}],
            "generator": {"kind": "memseg"}, "seed": 5}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "ui"
    args = ("--data", str(data), "--layout", "magnetic-tile", "--spec", str(path), "--out",
            str(out))
    server = Server(*args)
    try:
        _post(server, "api/run", {})
        deadline = time.time() + 120
        while time.time() < deadline and len(list((out / "images").rglob("*.png"))) < 3:
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=20)
    finally:
        if server.proc.poll() is None:
            server.stop()
    made = len(read_manifest(out))
    assert len(list((out / "images").rglob("*.png"))) > 0 and made < 12, "killed mid-batch"

    server = Server(*args)  # the lock of the killed server does not block its folder
    try:
        job = _post(server, "api/run", {})
        deadline = time.time() + 300
        while time.time() < deadline and job["state"] not in ("done", "failed"):
            time.sleep(0.2)
            job = json.loads(server.get(f"/api/job?id={job['id']}")[1])
        assert job["state"] == "done", job
        assert job["result"]["generated"] + job["result"]["skipped"] == 12
    finally:
        server.stop()
    records = read_manifest(out)
    assert sorted(r["id"] for r in records) == [f"crack_{i:05d}" for i in range(12)]
    lines = [json.loads(x)["id"] for f in out.glob("manifest*.jsonl")
             for x in f.read_text().splitlines()]
    assert sorted(lines) == sorted(r["id"] for r in records), "a record was written twice"
    reference = tmp_path / "reference"
    done = subprocess.run([sys.executable, "-m", "diag", "generate", str(path), "--out",
                           str(reference)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for r in records:
        for key in ("image", "mask"):
            assert (out / r[key]).read_bytes() == (reference / r[key]).read_bytes(), r[key]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
