"""Region files from annotation tools: COCO, CVAT for images 1.1, Label Studio, labelme.

Every file here is written the way the tool exports it (the fields real exports carry), and
every mask is checked pixel by pixel against a mask made independently: known rectangles,
masks encoded by encoders written here (COCO RLE, CVAT mask RLE, Label Studio brush RLE), and
pycocotools as a second COCO decoder when it is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw
from scipy import ndimage

from diag.data.manifest import read_manifest
from diag.errors import DiagError
from diag.generate import load_inputs, run_spec
from diag.generate.spec import load_spec
from diag.regions import DrawnRegions, RegionSpec, make_regions
from diag.regions.formats import read_annotations
from diag.regions.formats.coco import counts_from_string, decode_rle
from diag.regions.formats.label_studio import decode_brush

H, W = 48, 64  # the annotated image's size as the tools record it


# --- encoders written from the formats' descriptions, independent of the readers ----------

def runs(flat: np.ndarray) -> list[int]:
    """Alternating run lengths of 0s and 1s, starting with 0s (0 when the first pixel is 1)."""
    counts, value, n = [], 0, 0
    for v in flat.astype(bool).tolist():
        if v != value:
            counts.append(n)
            value, n = v, 0
        n += 1
    counts.append(n)
    return counts


def coco_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE: runs down the columns (Fortran order)."""
    return {"counts": runs(mask.ravel(order="F")), "size": list(mask.shape)}


def coco_string(counts: list[int]) -> str:
    """pycocotools' rleToString: differences from the count two back (from the 3rd on), in
    5-bit groups, least significant first, + 48, 0x20 = more groups follow."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def cvat_rle(mask: np.ndarray) -> str:
    """CVAT's mask rle: runs row by row over the box, starting with 0s, ", "-separated."""
    return ", ".join(str(c) for c in runs(mask.ravel()))


def brush_rle(values: np.ndarray) -> list[int]:
    """thi.ng/rle-pack as Label Studio writes it: 32-bit count, 5-bit word size - 1, four
    4-bit field sizes - 1, then chunks: 1 bit repeat flag, 2-bit size index, length - 1, value
    (repeats) or values (literals). Runs of one value are gathered into literal chunks."""
    sizes = [3, 4, 8, 16]
    bits = [f"{len(values):032b}", f"{8 - 1:05b}", *(f"{s - 1:04b}" for s in sizes)]

    def chunk(flag: str, n: int, payload: list[int]) -> None:
        idx = next(i for i, s in enumerate(sizes) if n - 1 < 1 << s)
        bits.append(flag + f"{idx:02b}" + f"{n - 1:0{sizes[idx]}b}"
                    + "".join(f"{v:08b}" for v in payload))

    vals = values.astype(int).tolist()
    i, literal = 0, []
    while i < len(vals):
        j = i
        while j < len(vals) and vals[j] == vals[i] and j - i < 1 << 16:
            j += 1
        if j - i == 1:
            literal.append(vals[i])
        else:
            for k in range(0, len(literal), 1 << 16):
                chunk("0", len(literal[k:k + (1 << 16)]), literal[k:k + (1 << 16)])
            literal = []
            chunk("1", j - i, [vals[i]])
        i = j
    for k in range(0, len(literal), 1 << 16):
        chunk("0", len(literal[k:k + (1 << 16)]), literal[k:k + (1 << 16)])
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return [int(text[k:k + 8], 2) for k in range(0, len(text), 8)]


def rect(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


def pil_polygon(shape: tuple[int, int], pts: list[tuple[float, float]]) -> np.ndarray:
    img = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(img).polygon(pts, fill=1, outline=1)
    return np.asarray(img, dtype=bool)


def blob(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A lumpy mask with holes: a stress test for run-length codes."""
    rng = np.random.default_rng(seed)
    m = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
    m[0, 0] = True  # a first run of 0 zeros
    return m


# --- files in the tools' export structure ---------------------------------------------------

SCRATCH_RLE = blob((H, W), 1)


def coco_file(tmp: Path, *, rle_compressed: bool = True, extra_ann: dict | None = None) -> Path:
    mask = SCRATCH_RLE
    rle = coco_rle(mask)
    if rle_compressed:
        rle = {"size": rle["size"], "counts": coco_string(rle["counts"])}
    crowd = np.zeros((H, W), bool)
    crowd[40:, :8] = True
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 88.0,
         "bbox": [10.0, 5.0, 10.0, 7.0], "attributes": {"occluded": False},
         "segmentation": [[10.0, 5.0, 20.0, 5.0, 20.0, 12.0, 10.0, 12.0]]},
        {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 20.0,
         "bbox": [2.0, 30.0, 5.0, 4.0], "segmentation": []},
        {"id": 3, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": float(mask.sum()),
         "bbox": [0.0, 0.0, float(W), float(H)], "segmentation": rle},
        {"id": 4, "image_id": 2, "category_id": 3, "iscrowd": 1, "area": float(crowd.sum()),
         "bbox": [0.0, 40.0, 8.0, 8.0], "segmentation": coco_rle(crowd)},
        *([extra_ann] if extra_ann else []),
    ]
    data = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "url": "",
                 "version": "", "year": ""},
        "categories": [{"id": 1, "name": "scratch", "supercategory": ""},
                       {"id": 2, "name": "dent", "supercategory": ""},
                       {"id": 3, "name": "stain", "supercategory": ""}],
        "images": [
            {"id": 1, "width": W, "height": H, "file_name": "train/tile_a.png", "license": 0,
             "flickr_url": "", "coco_url": "", "date_captured": 0},
            {"id": 2, "width": W, "height": H, "file_name": "tile_b.png", "license": 0,
             "flickr_url": "", "coco_url": "", "date_captured": 0},
            {"id": 3, "width": W, "height": H, "file_name": "tile_c.png", "license": 0,
             "flickr_url": "", "coco_url": "", "date_captured": 0},
        ],
        "annotations": anns,
    }
    path = tmp / "instances_default.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


CVAT_MASK = np.array([[0, 0, 1, 1, 0, 0, 0, 0],
                      [0, 1, 1, 1, 1, 0, 0, 0],
                      [1, 1, 1, 1, 1, 1, 0, 1],
                      [0, 0, 1, 1, 1, 0, 0, 1],
                      [0, 0, 0, 1, 0, 0, 0, 1]], bool)


def cvat_file(tmp: Path, *, rle: str | None = None, body: str | None = None) -> Path:
    rle = cvat_rle(CVAT_MASK) if rle is None else rle
    image = body if body is not None else f"""
  <image id="0" name="tiles/tile_a.png" width="{W}" height="{H}">
    <box label="dent" source="manual" occluded="0" xtl="4.00" ytl="6.00" xbr="20.00"
         ybr="18.00" z_order="0">
      <attribute name="depth">shallow</attribute>
    </box>
    <polygon label="scratch" source="manual" occluded="0"
             points="30.00,5.00;50.00,5.00;50.00,15.00;30.00,15.00" z_order="0">
    </polygon>
    <mask label="scratch" source="manual" occluded="0" rle="{rle}" left="10" top="30"
          width="8" height="5" z_order="0">
    </mask>
    <points label="pit" source="manual" occluded="0" points="60.00,40.00;61.00,44.00" z_order="0">
    </points>
    <tag label="checked" source="manual">
    </tag>
  </image>
  <image id="1" name="tiles/tile_b.png" width="{W}" height="{H}">
  </image>"""
    text = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id>
      <name>tiles</name>
      <size>2</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <bugtracker></bugtracker>
      <created>2024-05-02 10:11:12.000000+00:00</created>
      <updated>2024-05-02 11:12:13.000000+00:00</updated>
      <subset>default</subset>
      <start_frame>0</start_frame>
      <stop_frame>1</stop_frame>
      <frame_filter></frame_filter>
      <segments>
        <segment>
          <id>9</id>
          <start>0</start>
          <stop>1</stop>
          <url>http://localhost:8080/api/jobs/9</url>
        </segment>
      </segments>
      <owner>
        <username>alice</username>
        <email>alice@example.com</email>
      </owner>
      <assignee></assignee>
      <labels>
        <label><name>scratch</name><color>#fa3253</color><type>any</type><attributes></attributes></label>
        <label><name>dent</name><color>#33ddff</color><type>rectangle</type><attributes></attributes></label>
        <label><name>pit</name><color>#ff6037</color><type>points</type><attributes></attributes></label>
      </labels>
    </task>
    <dumped>2024-05-02 11:20:00.000000+00:00</dumped>
  </meta>{image}
</annotations>
"""
    path = tmp / "annotations.xml"
    path.write_text(text, encoding="utf-8")
    return path


LS_W, LS_H = 200, 100
BRUSH = blob((LS_H, LS_W), 2)


def ls_result(kind: str, value: dict, rid: str, w: int = LS_W, h: int = LS_H) -> dict:
    return {"original_width": w, "original_height": h, "image_rotation": 0, "value": value,
            "id": rid, "from_name": "label", "to_name": "image", "type": kind,
            "origin": "manual"}


def ls_task(tid: int, image: str, results: list[dict], cancelled: bool = False) -> dict:
    return {
        "id": tid,
        "annotations": [{
            "id": 30 + tid, "completed_by": 1, "result": results, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": "2024-05-02T10:11:12.345678Z",
            "updated_at": "2024-05-02T10:11:12.345678Z", "draft_created_at": None,
            "lead_time": 12.3, "prediction": {}, "result_count": 0,
            "unique_id": "c0ffee00-0000-4000-8000-000000000000", "import_id": None,
            "last_action": None, "task": tid, "project": 3, "updated_by": 1,
            "parent_prediction": None, "parent_annotation": None, "last_created_by": None}],
        "file_upload": image.rsplit("/", 1)[-1], "drafts": [], "predictions": [],
        "data": {"image": image}, "meta": {}, "created_at": "2024-05-02T10:00:00.000000Z",
        "updated_at": "2024-05-02T10:11:12.000000Z", "inner_id": tid, "total_annotations": 1,
        "cancelled_annotations": int(cancelled), "total_predictions": 0, "comment_count": 0,
        "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 3,
        "updated_by": 1, "comment_authors": []}


def ls_file(tmp: Path, *, brush: list[int] | None = None) -> Path:
    red = np.zeros((LS_H, LS_W, 4), np.uint8)  # the brush as a canvas paints it: RGBA colour
    red[BRUSH] = (255, 0, 0, 255)
    brush = brush_rle(red.ravel()) if brush is None else brush
    tasks = [
        ls_task(1, "/data/upload/3/1a2b3c4d-tile_a.png", [
            ls_result("polygonlabels", {"points": [[10, 10], [50, 10], [50, 50], [10, 50]],
                                        "closed": True, "polygonlabels": ["scratch"]}, "p1"),
            ls_result("rectanglelabels", {"x": 10, "y": 60, "width": 25, "height": 30,
                                          "rotation": 0, "rectanglelabels": ["dent"]}, "r1"),
            ls_result("rectanglelabels", {"x": 50, "y": 10, "width": 10, "height": 20,
                                          "rotation": 90, "rectanglelabels": ["dent"]}, "r2"),
            {"value": {"choices": ["ok"]}, "id": "c1", "from_name": "quality",
             "to_name": "image", "type": "choices", "origin": "manual"},
        ]),
        ls_task(2, "http://ls.example.com/data/upload/3/9f8e7d6c-tile_b.png", [
            ls_result("brushlabels", {"format": "rle", "rle": brush,
                                      "brushlabels": ["scratch"]}, "b1"),
        ]),
        ls_task(3, "/data/local-files/?d=scans/tile_c.png", [
            ls_result("polygonlabels", {"points": [[0, 0], [90, 0], [90, 90]],
                                        "polygonlabels": ["scratch"]}, "p2"),
        ], cancelled=True),
    ]
    path = tmp / "project-3-at-2024-05-02-10-20-c0ffee00.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


def one_line_error(exc: pytest.ExceptionInfo[DiagError], *names: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    for name in names:
        assert name in msg, msg
    return msg


# --- COCO -----------------------------------------------------------------------------------

@pytest.mark.parametrize("compressed", [True, False])
def test_coco_polygons_rle_boxes_and_labels(tmp_path: Path, compressed: bool) -> None:
    ann = read_annotations(coco_file(tmp_path, rle_compressed=compressed))
    assert ann.format == "coco" and set(ann.images) == {"tile_a", "tile_b", "tile_c"}
    a, b, c = (ann.images[k] for k in ("tile_a", "tile_b", "tile_c"))
    assert dict(ann.labels()) == {"scratch": 2, "dent": 1, "stain": 1} and not c.shapes
    square = rect((H, W), slice(5, 13), slice(10, 21))  # polygon corners are drawn inclusive
    box = rect((H, W), slice(30, 34), slice(2, 7))  # bbox [2, 30, 5, 4]: 5 x 4 pixels
    assert np.array_equal(a.mask((H, W), a.select("scratch")), square)
    assert np.array_equal(a.mask((H, W), a.select("dent")), box)
    assert np.array_equal(a.mask((H, W)), square | box)
    crowd = rect((H, W), slice(40, None), slice(None, 8))
    assert np.array_equal(b.mask((H, W), b.select("scratch")), SCRATCH_RLE)
    assert np.array_equal(b.mask((H, W), b.select("stain")), crowd)


def test_coco_rle_decoder_round_trips_hand_encoded_masks() -> None:
    for seed, shape in enumerate([(1, 1), (3, 5), (17, 4), (64, 80)]):
        m = blob(shape, seed) if min(shape) > 4 else np.random.default_rng(seed).random(shape) > .5
        rle = coco_rle(m)
        assert np.array_equal(decode_rle(rle, "t"), m)
        assert counts_from_string(coco_string(rle["counts"])) == rle["counts"]
        assert np.array_equal(decode_rle({"size": rle["size"],
                                          "counts": coco_string(rle["counts"])}, "t"), m)
    # a hand-computed case: a 3x2 mask [[1, 0], [1, 1], [0, 1]] -> F order 1 1 0 0 1 1
    assert decode_rle({"counts": [0, 2, 2, 2], "size": [3, 2]}, "t").astype(int).tolist() == \
        [[1, 0], [1, 1], [0, 1]]


def test_coco_rle_decoder_agrees_with_pycocotools() -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    for seed, shape in enumerate([(48, 64), (7, 300), (333, 5), (120, 90)]):
        m = blob(shape, seed)
        enc = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        text = enc["counts"].decode("ascii")
        assert np.array_equal(decode_rle({"size": enc["size"], "counts": text}, "t"), m)
        assert text == coco_string(coco_rle(m)["counts"]), "the test's encoder matches, too"
        fr = mask_api.frPyObjects(coco_rle(m), *shape)  # uncompressed -> compressed
        assert np.array_equal(decode_rle({"size": fr["size"],
                                          "counts": fr["counts"].decode()}, "t"),
                              mask_api.decode(fr).astype(bool))


def test_coco_scaled_to_an_image_of_another_size(tmp_path: Path) -> None:
    ann = read_annotations(coco_file(tmp_path))
    a, b = ann.images["tile_a"], ann.images["tile_b"]
    big = (2 * H, 2 * W)
    assert np.array_equal(a.mask(big, a.select("scratch")),
                          rect(big, slice(10, 25), slice(20, 41)))  # (20, 10)-(40, 24)
    assert np.array_equal(a.mask(big, a.select("dent")), rect(big, slice(60, 68), slice(4, 14)))
    assert np.array_equal(b.mask(big, b.select("scratch")),
                          np.kron(SCRATCH_RLE, np.ones((2, 2), bool)))


@pytest.mark.parametrize(("case", "words"), [
    ("rle-too-short", ("annotations[4].segmentation", "RLE counts cover", "corrupt")),
    ("rle-bad-char", ("annotations[4].segmentation", "not a valid RLE")),
    ("rle-huge", ("annotations[4].segmentation.size", "not a real image size")),
    ("missing-image", ("annotations[4]", "image_id 99", "add the image entry")),
    ("unknown-category", ("annotations[4]", "category_id 42")),
    ("odd-polygon", ("annotations[4].segmentation[0]", "even number")),
])
def test_coco_corrupt_files_are_one_line_errors(tmp_path: Path, case: str, words) -> None:
    extra = {"id": 5, "image_id": 3, "category_id": 1, "iscrowd": 0, "area": 1.0,
             "bbox": [0, 0, 1, 1]}
    extra.update({
        "rle-too-short": {"segmentation": {"counts": [3, 4], "size": [H, W]}},
        "rle-bad-char": {"segmentation": {"counts": "0 1~", "size": [H, W]}},
        "rle-huge": {"segmentation": {"counts": [10**12], "size": [10**6, 10**6]}},
        "missing-image": {"image_id": 99, "segmentation": []},
        "unknown-category": {"category_id": 42, "segmentation": []},
        "odd-polygon": {"segmentation": [[1, 2, 3, 4, 5, 6, 7]]},
    }[case])
    path = coco_file(tmp_path, extra_ann=extra)
    with pytest.raises(DiagError) as exc:
        read_annotations(path)
    one_line_error(exc, "instances_default.json", *words)


# --- CVAT -----------------------------------------------------------------------------------

def test_cvat_boxes_polygons_masks_points_and_labels(tmp_path: Path) -> None:
    ann = read_annotations(cvat_file(tmp_path))
    assert ann.format == "cvat" and set(ann.images) == {"tile_a", "tile_b"}
    a = ann.images["tile_a"]
    assert dict(a.labels()) == {"dent": 1, "scratch": 2, "pit": 1}
    assert not ann.images["tile_b"].shapes
    box = rect((H, W), slice(6, 18), slice(4, 20))  # xtl 4 .. xbr 20: 16 pixel centres
    assert np.array_equal(a.mask((H, W), a.select("dent")), box)
    scratch = rect((H, W), slice(5, 16), slice(30, 51))
    scratch[30:35, 10:18] |= CVAT_MASK
    assert np.array_equal(a.mask((H, W), a.select("scratch")), scratch)
    pits = np.zeros((H, W), bool)
    pits[40, 60] = pits[44, 61] = True
    assert np.array_equal(a.mask((H, W), a.select("pit")), pits)
    half = a.mask((H // 2, W // 2), a.select("dent"))  # scaled: the box (2, 3)-(10, 9)
    assert np.array_equal(half, rect((H // 2, W // 2), slice(3, 9), slice(2, 10)))


def test_cvat_rotated_box_and_ellipse(tmp_path: Path) -> None:
    body = f"""
  <image id="0" name="r.png" width="{W}" height="{H}">
    <box label="a" occluded="0" xtl="20.00" ytl="20.00" xbr="40.00" ybr="24.00"
         rotation="90.0" z_order="0"></box>
    <ellipse label="b" occluded="0" cx="10.00" cy="10.00" rx="5.00" ry="3.00"
             z_order="0"></ellipse>
  </image>"""
    img = read_annotations(cvat_file(tmp_path, body=body)).images["r"]
    # 90 degrees about the centre (30, 22): x 28..32, y 12..32, drawn inclusive as a polygon
    assert np.array_equal(img.mask((H, W), img.select("a")), rect((H, W), slice(12, 33),
                                                                   slice(28, 33)))
    ell = img.mask((H, W), img.select("b"))
    assert ell[10, 5:16].all() and ell[7:14, 10].all() and not ell[10, 16] and not ell[14, 10]


@pytest.mark.parametrize(("case", "words"), [
    ("bad-xml", ("not valid XML",)),
    ("rle-wrong-length", ("<mask>", "rle covers 39 pixels", "8x5 has 40")),
    ("rle-words", ("rle must be comma-separated",)),
    ("video", ("CVAT for video", "CVAT for images 1.1")),
    ("other-xml", ("<svg>", "CVAT for images 1.1")),
])
def test_cvat_corrupt_files_are_one_line_errors(tmp_path: Path, case: str, words) -> None:
    if case == "rle-wrong-length":
        path = cvat_file(tmp_path, rle=cvat_rle(CVAT_MASK).rsplit(", ", 1)[0])  # last run lost
    elif case == "rle-words":
        path = cvat_file(tmp_path, rle="3, four, 5")
    else:
        path = cvat_file(tmp_path)
        text = path.read_text()
        path.write_text({
            "bad-xml": text.replace("</annotations>", ""),
            "video": text.split("\n  <image")[0] + '\n  <track id="0" label="scratch" '
                     'source="manual"><box frame="0" outside="0" occluded="0" keyframe="1" '
                     'xtl="1" ytl="1" xbr="5" ybr="5" z_order="0"></box></track>\n</annotations>',
            "other-xml": '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>',
        }[case].replace('<svg xmlns="http://www.w3.org/2000/svg">', "<svg>"))
    with pytest.raises(DiagError) as exc:
        read_annotations(path)
    one_line_error(exc, "annotations.xml", *words)


# --- Label Studio ---------------------------------------------------------------------------

def test_label_studio_percent_shapes_brush_and_upload_prefix(tmp_path: Path) -> None:
    ann = read_annotations(ls_file(tmp_path))
    assert ann.format == "label-studio" and set(ann.images) == {"tile_a", "tile_b", "tile_c"}
    assert not ann.images["tile_c"].shapes, "a cancelled annotation holds no regions"
    a, b = ann.images["tile_a"], ann.images["tile_b"]
    shape = (LS_H, LS_W)
    # percent of 200 x 100: (20, 10)-(100, 50)
    assert np.array_equal(a.mask(shape, a.select("scratch")),
                          rect(shape, slice(10, 51), slice(20, 101)))
    upright = rect(shape, slice(60, 90), slice(20, 70))  # x 20..70, y 60..90: pixel centres
    # 90 degrees clockwise about the top-left corner (100, 10): x 80..100, y 10..30
    turned = rect(shape, slice(10, 31), slice(80, 101))
    assert np.array_equal(a.mask(shape, a.select("dent")), upright | turned)
    assert np.array_equal(b.mask(shape, b.select("scratch")), BRUSH)
    drawn = DrawnRegions(ann.path)
    assert drawn.covers("tile_a") and drawn.covers("1a2b3c4d-tile_a"), "prefix stripped or kept"
    assert drawn.covers("tile_b") and not drawn.covers("tile_c") and not drawn.covers("tile_x")


def test_label_studio_brush_decoder() -> None:
    # the converter's own layout, worked by hand: 4 values, word 8, sizes 3/4/8/16, one run
    assert decode_brush([0, 0, 0, 4, 57, 27, 252, 127, 224], "t").tolist() == [255] * 4
    rng = np.random.default_rng(0)
    for values in (np.repeat(np.uint8([0, 255, 0, 7]), [70000, 5, 1, 3]),
                   rng.integers(0, 256, 999).astype(np.uint8),
                   np.repeat((blob((30, 40), 3) * 255).astype(np.uint8).ravel(), 4)):
        assert np.array_equal(decode_brush(brush_rle(values), "t"), values)


def test_label_studio_brush_is_scaled_to_the_image(tmp_path: Path) -> None:
    ann = read_annotations(ls_file(tmp_path))
    b = ann.images["tile_b"]
    assert np.array_equal(b.mask((2 * LS_H, 2 * LS_W)), np.kron(BRUSH, np.ones((2, 2), bool)))
    a = ann.images["tile_a"]  # percent coordinates fit any size
    assert np.array_equal(a.mask((50, 100), a.select("scratch")),
                          rect((50, 100), slice(5, 26), slice(10, 51)))


@pytest.mark.parametrize(("case", "words"), [
    ("bad-json", ("not valid JSON",)),
    ("brush-wrong-length", ("task 2 result b1", "holds 80000 values", "80000")),
    ("brush-cut-short", ("task 2 result b1", "not a valid Label Studio brush RLE")),
    ("no-size", ("task 1 result p1 original_width",)),
])
def test_label_studio_corrupt_files_are_one_line_errors(tmp_path: Path, case: str, words
                                                        ) -> None:
    if case == "brush-wrong-length":
        half = np.zeros(LS_H * LS_W * 4 // 2, np.uint8)
        path = ls_file(tmp_path, brush=brush_rle(half))
        words = ("task 2 result b1", "holds 40000 values", "80000 are expected")
    elif case == "brush-cut-short":
        red = np.zeros((LS_H, LS_W, 4), np.uint8)
        red[BRUSH] = (255, 0, 0, 255)
        path = ls_file(tmp_path, brush=brush_rle(red.ravel())[:-40])
    else:
        path = ls_file(tmp_path)
        text = path.read_text()
        if case == "bad-json":
            path.write_text(text[:-30])
        else:
            path.write_text(text.replace('"original_width": 200, ', "", 1))
    with pytest.raises(DiagError) as exc:
        read_annotations(path)
    one_line_error(exc, path.name, *words)


# --- labelme, detection, label mapping, the spec field --------------------------------------

def test_labelme_keeps_labels(tmp_path: Path) -> None:
    path = tmp_path / "tile_a.json"
    path.write_text(json.dumps({
        "version": "5.4.1", "flags": {}, "imagePath": "tile_a.png", "imageData": None,
        "imageHeight": H, "imageWidth": W,
        "shapes": [
            {"label": "scratch", "points": [[10, 5], [20, 5], [20, 12], [10, 12]],
             "group_id": None, "description": "", "shape_type": "polygon", "flags": {},
             "mask": None},
            {"label": "dent", "points": [[2, 30], [6, 33]], "group_id": None,
             "description": "", "shape_type": "rectangle", "flags": {}, "mask": None}]}))
    ann = read_annotations(path)
    assert ann.format == "labelme" and not ann.multi and set(ann.images) == {"tile_a"}
    img = ann.images["tile_a"]
    assert np.array_equal(img.mask((H, W), img.select("dent")),
                          rect((H, W), slice(30, 34), slice(2, 7)))  # labelme: corners included
    drawn = DrawnRegions(path, {"dent": "blowhole"})  # one file: used for every image
    mask, used = drawn.region("any_image", (H, W), "blowhole")
    assert used == path and np.array_equal(mask, rect((H, W), slice(30, 34), slice(2, 7)))
    assert drawn.covers("x", "blowhole") and drawn.covers("x", "scratch")
    assert not drawn.covers("x", "crack")
    with pytest.raises(DiagError) as exc:
        drawn.region("x", (H, W), "crack")
    one_line_error(exc, "tile_a.json", "no shape labelled for 'crack'", "regions.labels")


def test_format_is_detected_from_content(tmp_path: Path) -> None:
    coco = coco_file(tmp_path)
    renamed = coco.rename(tmp_path / "regions.txt")
    assert read_annotations(renamed).format == "coco"
    xml = cvat_file(tmp_path)
    assert read_annotations(xml.rename(tmp_path / "cvat.json")).format == "cvat"
    (tmp_path / "notes.txt").write_text("scratch at the left edge")
    with pytest.raises(DiagError) as exc:
        read_annotations(tmp_path / "notes.txt")
    one_line_error(exc, "notes.txt", "COCO instances JSON", "CVAT for images 1.1 XML",
                   "Label Studio JSON export", "labelme JSON", "mask image")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DiagError) as exc:
        read_annotations(tmp_path / "list.json")
    one_line_error(exc, "list.json", "JSON object", "Label Studio tasks")


def test_drawn_regions_map_labels_to_defect_types(tmp_path: Path) -> None:
    drawn = DrawnRegions(coco_file(tmp_path), {"scratch": "crack", "stain": "crack"})
    assert drawn.covers("tile_a") and drawn.covers("tile_b") and not drawn.covers("tile_c")
    assert drawn.covers("tile_a", "crack") and drawn.covers("tile_a", "dent")
    assert drawn.covers("tile_b", "crack") and not drawn.covers("tile_b", "dent")
    assert not drawn.covers("tile_a", "scratch"), "a mapped label no longer names itself"
    mask, path = drawn.region("tile_b", (H, W), "crack")
    crowd = rect((H, W), slice(40, None), slice(None, 8))
    assert path.name == "instances_default.json"
    assert np.array_equal(mask, SCRATCH_RLE | crowd), "both labels mapped to crack"
    all_shapes, _ = drawn.region("tile_a", (H, W))
    assert all_shapes.sum() == rect((H, W), slice(5, 13), slice(10, 21)).sum() + 20
    with pytest.raises(DiagError) as exc:
        drawn.region("tile_b", (H, W), "dent")
    one_line_error(exc, "no shape labelled for 'dent'", "crack")
    with pytest.raises(DiagError) as exc:
        drawn.region("tile_z", (H, W), "crack")
    one_line_error(exc, "tile_z", "does not list that image")
    # files without labels (a PNG mask) keep giving every defect type all of their pixels
    png = tmp_path / "default.png"
    Image.fromarray((SCRATCH_RLE * 255).astype(np.uint8)).save(png)
    plain = DrawnRegions(png)
    assert plain.covers("anything", "crack")
    assert np.array_equal(plain.region("anything", (H, W), "crack")[0], SCRATCH_RLE)


def test_region_spec_labels_are_validated(tmp_path: Path) -> None:
    from diag.config import from_dict

    spec = from_dict(RegionSpec, {"source": "drawn", "path": "x.json",
                                  "labels": {"scratch": "crack", 3: "dent"}}, "spec.yaml",
                     "regions.")
    assert spec.labels == {"scratch": "crack", "3": "dent"}
    for bad in ({"scratch": None}, {"scratch": ["crack"]}, {"": "crack"}):
        with pytest.raises(DiagError) as exc:
            from_dict(RegionSpec, {"source": "drawn", "path": "x.json", "labels": bad},
                      "spec.yaml", "regions.")
        one_line_error(exc, "spec.yaml", "regions.labels", "{scratch: crack}")
    with pytest.raises(DiagError) as exc:
        from_dict(RegionSpec, {"source": "drawn", "path": "x", "labels": ["a"]}, "spec.yaml",
                  "regions.")
    one_line_error(exc, "labels", "mapping")
    src = make_regions(RegionSpec(source="drawn", path=str(coco_file(tmp_path)),
                                  labels={"scratch": "crack"}))
    mask, info = src.sample_shape(np.random.default_rng(0), (H, W), "tile_b", "crack")
    assert np.array_equal(mask, SCRATCH_RLE) and info["region_file"].endswith(".json")


# --- diag regions show ----------------------------------------------------------------------

def test_regions_show_prints_a_summary_and_writes_a_preview(tmp_path: Path, cli,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.chdir(tmp_path)
    coco = coco_file(tmp_path)
    code, out, err = cli("regions", "show", coco)
    assert code == 0, err
    assert "format: COCO instances JSON" in out and "images: 3 (2 with shapes)" in out
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines()
             if line.split() and line.split()[0] in ("scratch", "dent", "stain")}
    assert table == {"scratch": ["2", "2"], "dent": ["1", "1"], "stain": ["1", "1"]}
    assert "images without shapes: 1 ('tile_c')" in out
    pic = np.asarray(Image.open(tmp_path / "regions_preview.png"))
    assert pic.shape == (H, W, 3), "the default preview, at the annotation's size"
    grey = (pic == 128).all(axis=2)
    assert np.array_equal(~grey, rect((H, W), slice(5, 13), slice(10, 21))
                          | rect((H, W), slice(30, 34), slice(2, 7))), "shapes on grey"
    assert not (pic[8, 15] == pic[31, 4]).all(), "a colour per label"
    assert "colours: scratch blue, dent orange" in out
    # on the real image, another image, another size
    (tmp_path / "imgs" / "train").mkdir(parents=True)
    Image.fromarray(np.full((2 * H, 2 * W), 40, np.uint8)).save(tmp_path / "imgs/train/tile_b.png")
    code, out, err = cli("regions", "show", coco, "--image", "tile_b", "--images",
                         tmp_path / "imgs", "--out", tmp_path / "p" / "b.png")
    assert code == 0, err
    pic = np.asarray(Image.open(tmp_path / "p" / "b.png"))
    assert pic.shape == (2 * H, 2 * W, 3) and "tile_b.png" in out
    crowd = rect((H, W), slice(40, None), slice(None, 8))
    changed = ~(pic == 40).all(axis=2)
    assert np.array_equal(changed, np.kron(SCRATCH_RLE | crowd, np.ones((2, 2), bool))), \
        "the annotated pixels, scaled to the real image, and only those"
    assert not list((tmp_path / "p").glob(".*.tmp")), "written atomically"


@pytest.mark.parametrize(("args", "words"), [
    (["--image", "tile_q"], ("--image 'tile_q'", "tile_a")),
    (["--out", "."], ("--out", "is a folder")),
])
def test_regions_show_errors_are_one_line(tmp_path: Path, cli, args, words) -> None:
    code, out, err = cli("regions", "show", ls_file(tmp_path), *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert all(w in err for w in words), err


def test_regions_show_other_formats(tmp_path: Path, cli) -> None:
    for path, fmt in ((cvat_file(tmp_path), "CVAT for images 1.1 XML"),
                      (ls_file(tmp_path), "Label Studio JSON export")):
        code, out, err = cli("regions", "show", path, "--out", tmp_path / f"{path.stem}.png")
        assert code == 0 and f"format: {fmt}" in out, err
        assert Image.open(tmp_path / f"{path.stem}.png").size in ((W, H), (LS_W, LS_H))
    code, _, err = cli("regions", "show", tmp_path / "missing.json")
    assert code == 2 and "missing.json" in err


# --- diag generate with regions from COCO and Label Studio ----------------------------------

def _negatives(example_root: Path) -> list[Path]:
    return sorted((example_root / "MT_Free" / "Imgs").glob("*.jpg"))


def _spec(tmp: Path, root: Path, regions: dict, counts: tuple[int, int], name: str) -> Path:
    spec = {"dataset": {"layout": "magnetic-tile", "root": str(root), "split": "all"},
            "regions": regions,
            "defects": [{"name": "crack", "prompt": "a thin dark crack", "count": counts[0]},
                        {"name": "blowhole", "prompt": "a small dark pit", "count": counts[1]}],
            "generator": {"kind": "memseg"}, "seed": 0}
    path = tmp / name
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _check_inside(out: Path, expected: dict[tuple[str, str], np.ndarray], n: int) -> None:
    records = read_manifest(out)
    assert len(records) == n
    for r in records:
        stem = Path(r["source"]).stem
        mask = np.asarray(Image.open(out / r["mask"])) > 0
        allowed = expected.get((stem, r["defect"]))
        assert allowed is not None, f"{r['defect']} put on {stem}, which has no shape for it"
        assert mask.any() and not (mask & ~allowed).any(), f"{r['id']} leaves its shapes"
        assert np.array_equal(mask, allowed), "as-is: the region is the union of the shapes"
        assert r["region"]["source"] == "drawn" and r["region"]["region_file"]


def test_generate_with_regions_from_coco(tmp_path: Path, example_root: Path) -> None:
    negs = _negatives(example_root)[:4]
    images, anns, expected = [], [], {}
    for i, p in enumerate(negs):
        w, h = Image.open(p).size
        images.append({"id": i + 1, "width": w, "height": h, "file_name": p.name, "license": 0,
                       "flickr_url": "", "coco_url": "", "date_captured": 0})
        if i < 3:  # scratches on three images
            pts = [(0.2 * w, 0.2 * h), (0.7 * w, 0.25 * h), (0.6 * w, 0.6 * h)]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "area": 1.0, "bbox": [0, 0, 1, 1],
                         "segmentation": [[round(v, 2) for xy in pts for v in xy]]})
            expected[(p.stem, "crack")] = pil_polygon((h, w), [(round(x, 2), round(y, 2))
                                                               for x, y in pts])
        if i in (1, 2):  # pits, as boxes, on two of them
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 2, "iscrowd": 0,
                         "area": 100.0, "bbox": [10, 20, 10, 10]})
            expected[(p.stem, "blowhole")] = rect((h, w), slice(20, 30), slice(10, 20))
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({
        "licenses": [], "info": {"description": "tiles"}, "images": images, "annotations": anns,
        "categories": [{"id": 1, "name": "scratch", "supercategory": ""},
                       {"id": 2, "name": "pit", "supercategory": ""}]}))
    regions = {"source": "drawn", "path": str(coco), "labels": {"scratch": "crack",
                                                                "pit": "blowhole"}}
    spec = load_spec(_spec(tmp_path, example_root, regions, (4, 3), "coco.yaml"))
    inputs = load_inputs(spec)
    assert {s.path.stem for s in inputs.candidates["crack"]} == {p.stem for p in negs[:3]}
    assert {s.path.stem for s in inputs.candidates["blowhole"]} == {p.stem for p in negs[1:3]}
    run_spec(spec, tmp_path / "out")
    _check_inside(tmp_path / "out", expected, 7)
    # a defect type no label maps to: one line naming the labels there and the fix
    bad = load_spec(_spec(tmp_path, example_root, {"source": "drawn", "path": str(coco)},
                          (1, 1), "bad.yaml"))
    with pytest.raises(DiagError) as exc:
        load_inputs(bad)
    one_line_error(exc, "crack", "'pit', 'scratch'", "regions.labels")


def test_generate_with_regions_from_label_studio(tmp_path: Path, example_root: Path) -> None:
    negs = _negatives(example_root)[4:7]
    tasks, expected = [], {}
    for i, p in enumerate(negs):
        w, h = Image.open(p).size
        poly = [[15.0, 20.0], [70.0, 25.0], [55.0, 70.0], [20.0, 60.0]]
        # recorded at half size: percent coordinates fit the real image all the same
        results = [ls_result("polygonlabels", {"points": poly, "polygonlabels": ["Scratch"]},
                             f"p{i}", w=w // 2, h=h // 2)]
        expected[(p.stem, "crack")] = pil_polygon((h, w), [(x / 100 * w, y / 100 * h)
                                                           for x, y in poly])
        if i == 0:
            brush = np.zeros((h, w), bool)
            brush[h // 3:h // 2, w // 4:w // 2] = True
            rgba = np.repeat((brush * 255).astype(np.uint8).ravel(), 4)
            results.append(ls_result("brushlabels", {"format": "rle", "rle": brush_rle(rgba),
                                                     "brushlabels": ["Pit"]}, "b0", w=w, h=h))
            expected[(p.stem, "blowhole")] = brush
        tasks.append(ls_task(i + 1, f"/data/upload/5/{i:08x}-{p.name}", results))
    path = tmp_path / "project-5.json"
    path.write_text(json.dumps(tasks))
    regions = {"source": "drawn", "path": str(path), "labels": {"Scratch": "crack",
                                                                "Pit": "blowhole"}}
    spec = load_spec(_spec(tmp_path, example_root, regions, (3, 2), "ls.yaml"))
    run_spec(spec, tmp_path / "out")
    _check_inside(tmp_path / "out", expected, 5)


def test_coco_rle_of_another_size_than_its_image_entry(tmp_path: Path) -> None:
    small = rect((H // 2, W // 2), slice(3, 5), slice(6, 9))
    extra = {"id": 5, "image_id": 3, "category_id": 2, "iscrowd": 0, "area": 6.0,
             "bbox": [6, 3, 3, 2], "segmentation": coco_rle(small)}
    c = read_annotations(coco_file(tmp_path, extra_ann=extra)).images["tile_c"]
    assert np.array_equal(c.mask((H, W)), rect((H, W), slice(6, 10), slice(12, 18)))


def test_folder_of_labelme_files_by_stem(tmp_path: Path) -> None:
    folder = tmp_path / "labelme"
    folder.mkdir()
    for stem, label in (("tile_a", "scratch"), ("tile_b", "pit")):
        (folder / f"{stem}.json").write_text(json.dumps({
            "version": "5.4.1", "flags": {}, "imagePath": f"../{stem}.png", "imageData": None,
            "imageHeight": H, "imageWidth": W, "shapes": [
                {"label": label, "points": [[10, 5], [20, 5], [20, 12]], "group_id": None,
                 "description": "", "shape_type": "polygon", "flags": {}, "mask": None}]}))
    drawn = DrawnRegions(folder, {"pit": "blowhole"})
    assert drawn.covers("tile_a", "scratch") and not drawn.covers("tile_a", "blowhole")
    assert drawn.covers("tile_b", "blowhole") and not drawn.covers("tile_c", "blowhole")
    assert "'pit (-> blowhole)', 'scratch'" in drawn.hint("crack")
    mask, path = drawn.region("tile_b", (H, W), "blowhole")
    assert path.name == "tile_b.json"
    assert np.array_equal(mask, pil_polygon((H, W), [(10, 5), (20, 5), (20, 12)]))
    coco_file(folder)  # a many-image file among per-image files: named in a one-line error
    with pytest.raises(DiagError) as exc:
        DrawnRegions(folder).region("instances_default", (H, W))
    one_line_error(exc, "instances_default.json", "COCO", "regions.path itself")


def test_generate_with_regions_from_cvat_and_labelme(tmp_path: Path, example_root: Path) -> None:
    """The other two imports drive a real generate: a CVAT for images 1.1 XML, and a folder of
    labelme files named after the images."""
    negs = _negatives(example_root)[:3]
    tri = [(0.1, 0.2), (0.8, 0.3), (0.5, 0.9)]
    quad = [(0.3, 0.3), (0.6, 0.3), (0.6, 0.5), (0.3, 0.5)]
    images, expected = [], {}
    labelme = tmp_path / "labelme"
    labelme.mkdir()
    for i, p in enumerate(negs):
        w, h = Image.open(p).size
        scratch = [(round(x * w, 2), round(y * h, 2)) for x, y in tri]
        pit = [(round(x * w, 2), round(y * h, 2)) for x, y in quad]
        expected[(p.stem, "crack")] = pil_polygon((h, w), scratch)
        shapes = [f'<polygon label="scratch" source="manual" occluded="0" points="'
                  f'{";".join(f"{x:.2f},{y:.2f}" for x, y in scratch)}" z_order="0"></polygon>']
        lm = [{"label": "scratch", "points": [list(xy) for xy in scratch], "group_id": None,
               "description": "", "shape_type": "polygon", "flags": {}, "mask": None}]
        if i == 1:
            expected[(p.stem, "blowhole")] = pil_polygon((h, w), pit)
            shapes.append(f'<polygon label="pit" source="manual" occluded="0" points="'
                          f'{";".join(f"{x:.2f},{y:.2f}" for x, y in pit)}" z_order="0">'
                          '</polygon>')
            lm.append({**lm[0], "label": "pit", "points": [list(xy) for xy in pit]})
        images.append(f'<image id="{i}" name="scans/{p.name}" width="{w}" height="{h}">'
                      + "".join(shapes) + "</image>")
        (labelme / f"{p.stem}.json").write_text(json.dumps({
            "version": "5.4.1", "flags": {}, "shapes": lm, "imagePath": f"../{p.name}",
            "imageData": None, "imageHeight": h, "imageWidth": w}))
    xml = tmp_path / "annotations.xml"
    xml.write_text('<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>'
                   "<meta><task><id>7</id><name>tiles</name><size>3</size><labels>"
                   "<label><name>scratch</name><type>polygon</type></label>"
                   "<label><name>pit</name><type>polygon</type></label></labels></task></meta>"
                   + "".join(images) + "</annotations>")
    for name, path in (("cvat", xml), ("labelme", labelme)):
        regions = {"source": "drawn", "path": str(path), "labels": {"scratch": "crack",
                                                                    "pit": "blowhole"}}
        spec = load_spec(_spec(tmp_path, example_root, regions, (3, 2), f"{name}.yaml"))
        run_spec(spec, tmp_path / name)
        _check_inside(tmp_path / name, expected, 5)
