"""Gallery index and search: safe file format, exact top-k against a full sort, faiss agreement, rank-list
pictures, the CLI, and clear errors for bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file

from deploy_fixtures import (
    identity_pattern,
    noisy,
    register_toy_text_method,
    save_tiny_agw,
    save_tiny_text,
    write_gallery,
    write_pair_gallery,
)
from vireid.cli import main
from vireid.errors import CheckpointError, ConfigError, DataError, MissingDependencyError, StorageError
from vireid.index import (
    FeatureFileWriter,
    GalleryIndex,
    build_index,
    identities_from_layout,
    identity_from_folder,
    identity_from_name,
    open_feature_file,
    weights_fingerprint,
)
from vireid.inference import FeatureExtractor
from vireid.search import build_ivf, exact_topk, faiss_flat_index, faiss_topk, search_cli
from vireid.visualize import MATCH_COLOUR, MISMATCH_COLOUR

PIDS = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_agw(tmp_path_factory.mktemp("search") / "ckpt")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, list[tuple[str, int]]]:
    root = tmp_path_factory.mktemp("gallery")
    return root, write_gallery(root, PIDS, per_id=3)


@pytest.fixture(scope="module")
def extractor(ckpt) -> FeatureExtractor:
    return FeatureExtractor(ckpt)


@pytest.fixture(scope="module")
def index(tmp_path_factory, extractor, gallery) -> GalleryIndex:
    root, _ = gallery
    return build_index(extractor, root, tmp_path_factory.mktemp("idx") / "gallery.vidx", modality="visible")


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


# ------------------------------------------------------------------------------------------- the format


def test_index_is_safetensors_plus_json_and_complete(index, gallery, extractor, ckpt):
    root, written = gallery
    assert {p.name for p in index.folder.iterdir()} == {"features.safetensors", "index.json", ".vireid-folder"}
    stored = load_file(str(index.folder / "features.safetensors"))["features"]  # the library's own reader
    expected = extractor([root / rel for rel, _ in written], "visible")
    torch.testing.assert_close(stored, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(np.array(index.features)), stored)
    meta = index.meta
    assert meta.paths == [rel for rel, _ in written]
    assert meta.pids == [pid for _, pid in written]
    assert meta.identity_source == "folder" and meta.modality == "visible"
    assert (meta.num_items, meta.dim) == (15, extractor.model.feature_dim)
    # The fingerprint hashes the tensors, not the file bytes (see tests/test_faults_files.py).
    assert meta.checkpoint.weights_sha256 == weights_fingerprint(ckpt) and meta.checkpoint.method == "baseline"


def test_feature_file_is_streamed_in_blocks(tmp_path):
    feats = unit_rows(10, 6, seed=0)
    with FeatureFileWriter(tmp_path / "f.safetensors", 10, 6, {"note": "x"}) as writer:
        for block in feats.split(4):
            writer.write(block)
    torch.testing.assert_close(load_file(str(tmp_path / "f.safetensors"))["features"], feats)
    with safe_open(str(tmp_path / "f.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"note": "x"}
    torch.testing.assert_close(torch.from_numpy(np.array(open_feature_file(tmp_path / "f.safetensors"))), feats)
    writer = FeatureFileWriter(tmp_path / "g.safetensors", 5, 6)
    writer.write(feats[:3])
    with pytest.raises(ValueError, match="3 rows written, 5 declared"):
        writer.close()
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(DataError, match="not a readable vireid feature file"):
        open_feature_file(tmp_path / "bad.safetensors")


def test_identity_rules_of_known_layouts():
    assert identity_from_folder("cam3/0007/0001.jpg") == 7  # SYSU-MM01
    assert identity_from_folder("Thermal/12/T_female_back_t_06301_12.bmp") == 12  # RegDB
    assert identity_from_folder("test_nir/cam2/0043/0043_c02_s1_f1_nir.jpg") == 43  # LLCM
    assert identity_from_folder("misc/photo.jpg") is None
    assert identity_from_name("000201_cam1_0_00.jpg") == 201  # RGBNT201
    assert identity_from_name("IMG_0001.jpg") is None
    assert identities_from_layout(["RGB/0003_0.png", "RGB/0010_1.png"]) == ([3, 10], "filename")
    assert identities_from_layout(["cam1/0003/a.png", "misc/b.png"]) == (None, None)  # all or nothing


def test_labels_file_sets_identities_and_is_checked(tmp_path, extractor, gallery):
    root, written = gallery
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"{rel} {100 + pid}" for rel, pid in written) + "\n")
    idx = build_index(extractor, root, tmp_path / "l.vidx", labels=labels)
    assert idx.meta.pids == [100 + pid for _, pid in written]
    assert idx.meta.identity_source.startswith("labels:")
    labels.write_text("\n".join(f"{rel} {pid}" for rel, pid in written[1:]))
    with pytest.raises(DataError, match=r"labels.txt gives no identity for 1 gallery images"):
        build_index(extractor, root, tmp_path / "l.vidx", labels=labels)
    labels.write_text("cam1/0001/0001.png 1\nelsewhere/x.png 2\n")
    with pytest.raises(DataError, match="not in the gallery folder"):
        build_index(extractor, root, tmp_path / "l.vidx", labels=labels)
    labels.write_text("cam1/0001/0001.png one\n")
    with pytest.raises(DataError, match="line 1"):
        build_index(extractor, root, tmp_path / "l.vidx", labels=labels)


# -------------------------------------------------------------------------------------------- ranking


def test_exact_topk_equals_a_full_sort():
    queries, gallery = unit_rows(7, 32, seed=1), unit_rows(1000, 32, seed=2)
    full = queries @ gallery.T
    expected_scores, expected_idx = full.sort(dim=1, descending=True)
    # A tiny block forces many blocks and merges; numpy (memory-map) input must give the same result.
    for source in (gallery, gallery.numpy()):
        scores, idx = exact_topk(queries, source, 10, block_elements=7 * 64)
        torch.testing.assert_close(scores, expected_scores[:, :10])
        assert torch.equal(idx, expected_idx[:, :10])
    scores, idx = exact_topk(queries, gallery[:5], 10)  # k larger than the gallery
    assert scores.shape == (7, 5)
    assert torch.equal(idx, full[:, :5].argsort(dim=1, descending=True))


def test_faiss_and_torch_return_the_same_top_k():
    queries, gallery = unit_rows(20, 64, seed=3), unit_rows(3000, 64, seed=4)
    t_scores, t_idx = exact_topk(queries, gallery, 15)
    f_scores, f_idx = faiss_topk(queries, faiss_flat_index(gallery.numpy(), chunk_rows=1000), 15)
    assert torch.equal(t_idx, f_idx)
    torch.testing.assert_close(t_scores, f_scores, atol=1e-5, rtol=0)
    # IVF visiting every list is exhaustive, so it must agree too; visiting one list usually does not.
    ivf = build_ivf(gallery, nlist=8)
    _, i_idx = faiss_topk(queries, ivf, 15, nprobe=8)
    assert torch.equal(t_idx, i_idx)
    _, one_list = faiss_topk(queries, ivf, 15, nprobe=1)
    assert not torch.equal(one_list, t_idx)


def test_index_backends_agree_and_ivf_is_stored(tmp_path, extractor, gallery, index):
    queries = extractor([gallery[0] / rel for rel, _ in gallery[1][::4]], "infrared")
    torch_result = index.search(queries, 6, backend="torch")
    faiss_result = index.search(queries, 6, backend="faiss")
    assert torch.equal(torch_result.indices, faiss_result.indices)
    assert torch_result.backend == "torch" and index.search(queries, 6).backend == "torch"  # auto: exact
    with pytest.raises(ConfigError, match="has no IVF index"):
        index.search(queries, 6, backend="ivf")
    with_ivf = build_index(extractor, gallery[0], tmp_path / "ivf.vidx", ivf_lists=2)
    assert (with_ivf.folder / "ivf.faiss").is_file()
    result = with_ivf.search(queries, 6, nprobe=2)
    assert result.backend == "ivf" and torch.equal(result.indices, torch_result.indices)


def test_copies_rank_themselves_first_and_near_copies_find_their_identity(tmp_path, extractor, index, gallery):
    root, written = gallery
    copies = extractor([root / rel for rel, _ in written], "visible")
    result = index.search(copies, 3)
    assert torch.equal(result.indices[:, 0], torch.arange(len(written)))
    torch.testing.assert_close(result.scores[:, 0], torch.ones(len(written)), atol=1e-5, rtol=0)
    # New images of each identity (fresh noise) are nearest to their own identity's gallery images.
    fresh = [Image.fromarray(noisy(identity_pattern(pid), seed=9000 + pid)) for pid in PIDS]
    top1 = index.search(extractor(fresh, "visible"), 1).indices[:, 0]
    assert [index.meta.pids[i] for i in top1.tolist()] == list(PIDS)


# ------------------------------------------------------------------------------------------ CLI, pictures


def test_search_cli_prints_a_table_and_draws_the_rank_list(tmp_path, index, gallery):
    root, _ = gallery
    console = Console(record=True, width=200)
    query = root / "cam1/0003/0002.png"
    hits = search_cli(
        str(index.folder), query=str(query), modality="visible", top=4, output=str(tmp_path / "r.png"), console=console
    )
    text = console.export_text()
    assert "cam1/0003/0002.png" in text and "top 4 of 15 visible images (torch search)" in text
    assert [h.rank for h in hits] == [1, 2, 3, 4] and hits[0].path == query and hits[0].match is True
    # Identities come from the query's folder (0003): the three images of identity 3 come first.
    assert [h.pid for h in hits[:3]] == [3, 3, 3] and hits[3].match is False
    picture = Image.open(tmp_path / "r.png")
    # margin 8 + query tile (64 + 2*4) + gap 16 + 4 tiles of 72 + 3 spacings of 4 + margin 8; rows 128 + 8 + 14.
    assert picture.size == (8 + 72 + 16 + 4 * 72 + 3 * 4 + 8, 8 + 150 + 8)
    first_tile_x = 8 + 72 + 16
    assert picture.getpixel((first_tile_x + 1, 8 + 1)) == MATCH_COLOUR
    assert picture.getpixel((first_tile_x + 3 * 76 + 1, 8 + 1)) == MISMATCH_COLOUR


def test_command_line_index_and_search(tmp_path, ckpt, gallery, capsys):
    root, _ = gallery
    out = tmp_path / "cli.vidx"
    assert main(["index", str(ckpt), "--images", str(root), "--modality", "visible", "-o", str(out)]) == 0
    png = tmp_path / "ranks.png"
    query = root / "cam1/0002/0001.png"
    args = ["search", str(out), "--query", str(query), "--modality", "visible", "--top", "3", "-o", str(png)]
    assert main(args) == 0
    assert Image.open(png).size == (8 + 72 + 16 + 3 * 72 + 2 * 4 + 8, 166)
    assert main(["search", str(tmp_path / "missing.vidx"), "--query", str(query)]) == 2
    assert "missing.vidx does not exist" in capsys.readouterr().err


def test_bad_inputs_give_clear_errors(tmp_path, monkeypatch, ckpt, extractor, index, gallery):
    root, _ = gallery
    query = str(root / "cam1/0001/0001.png")
    with pytest.raises(DataError, match="does not exist"):
        GalleryIndex.open(tmp_path / "nothing.vidx")
    (tmp_path / "empty.vidx").mkdir()
    with pytest.raises(DataError, match="is not a vireid index"):
        GalleryIndex.open(tmp_path / "empty.vidx")
    with pytest.raises(ConfigError, match="cannot embed texts"):
        search_cli(str(index.folder), text="a man in black")
    with pytest.raises(ConfigError, match="modality='depth'"):
        search_cli(str(index.folder), query=query, modality="depth")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        search_cli(str(index.folder), query=str(tmp_path / "broken.jpg"))
    other = save_tiny_agw(tmp_path / "other", seed=7)
    with pytest.raises(CheckpointError, match="is not the model that built the index"):
        search_cli(str(index.folder), query=query, checkpoint=str(other))
    with pytest.raises(DataError, match="do not match the index's 64-d features"):
        index.search(torch.zeros(1, 5))
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "faiss", None)  # the faiss extra is not installed
        with pytest.raises(MissingDependencyError, match=r"faiss search.*pip install 'vireid\[faiss\]'"):
            GalleryIndex.open(index.folder).search(torch.zeros(1, 64), backend="faiss")
    (tmp_path / "no_images").mkdir()
    with pytest.raises(DataError, match="no images"):
        build_index(extractor, tmp_path / "no_images", tmp_path / "x.vidx")
    broken_gallery = tmp_path / "broken_gallery" / "cam1" / "0001"
    broken_gallery.mkdir(parents=True)
    Image.fromarray(identity_pattern(1)).save(broken_gallery / "0001.png")
    (broken_gallery / "0002.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DataError, match=r"0002\.png is not a readable image"):
        build_index(extractor, tmp_path / "broken_gallery", tmp_path / "partial.vidx")
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]  # nothing half-written is left
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(StorageError, match="refusing to overwrite"):
        build_index(extractor, root, tmp_path / "precious.txt")
    with pytest.raises(ConfigError, match="modality='pair'"):
        build_index(extractor, root, tmp_path / "x.vidx", modality="pair")


def test_text_search_over_rgb_thermal_pairs(monkeypatch, tmp_path):
    register_toy_text_method(monkeypatch)
    ckpt = save_tiny_text(tmp_path / "text")
    names = write_pair_gallery(tmp_path / "pairs")
    extractor = FeatureExtractor(ckpt)
    index = build_index(extractor, tmp_path / "pairs", tmp_path / "p.vidx", modality="pair")
    assert index.meta.paths == [f"RGB/{n}" for n in names] and index.meta.pair_paths == [f"T/{n}" for n in names]
    assert index.meta.pids == [1, 1, 2, 2, 3, 3] and index.meta.identity_source == "filename"
    text = "a woman in a long red coat carrying a bag"
    hits = search_cli(str(index.folder), text=text, top=3, output=str(tmp_path / "t.png"), console=Console(record=True))
    expected = (extractor(text, "text") @ torch.from_numpy(np.array(index.features)).T)[0].argsort(descending=True)
    assert [h.index for h in hits] == expected[:3].tolist()
    assert hits[0].pair_path == tmp_path / "pairs" / "T" / names[expected[0]]
    # Text tile 200 px, then three pair tiles of 2*64 + 2 + 2*4 = 138 px.
    assert Image.open(tmp_path / "t.png").size == (8 + 200 + 16 + 3 * 138 + 2 * 4 + 8, 166)
    with pytest.raises(ConfigError, match="use --text"):
        search_cli(str(index.folder), query=str(tmp_path / "pairs" / "RGB" / names[0]))


# ------------------------------------------------------------------------------------ worst-query pictures
# These need vireid.evaluation (per-query AP, the protocol runner), which lands on main separately; until it
# is merged they are skipped, afterwards they gate like every other test.


@pytest.fixture
def evaluation_package():
    pytest.importorskip("vireid.evaluation.metrics", reason="the evaluation package is not merged yet")
    pytest.importorskip("vireid.evaluation.runner", reason="the evaluation package is not merged yet")


def reference_ap(sim_row: torch.Tensor, g_pids: list[int], q_pid: int, keep: list[bool]) -> float:
    """AP by the textbook loop: rank kept items by descending similarity, average j / rank of the j-th match."""
    order = [i for i in sim_row.argsort(descending=True).tolist() if keep[i]]
    ranks = [r for r, i in enumerate(order, start=1) if g_pids[i] == q_pid]
    return sum(j / r for j, r in enumerate(ranks, start=1)) / len(ranks)


def test_worst_queries_are_the_lowest_ap_and_are_drawn(tmp_path, extractor, gallery, evaluation_package):
    from vireid.data.records import ImageRecord, Modality
    from vireid.evaluation.trial import Trial
    from vireid.visualize import save_worst_queries, trial_features, worst_query_rows

    root, written = gallery
    g_records = tuple(ImageRecord(str(root / rel), pid, 1, Modality.VISIBLE) for rel, pid in written)
    q_records = []
    for pid in PIDS:
        path = tmp_path / f"q{pid}.png"
        Image.fromarray(noisy(identity_pattern(pid), seed=7000 + pid)).save(path)
        # Query 1 shows identity 1 but is labelled 4: its true matches rank low, so its AP is the lowest.
        q_records.append(ImageRecord(str(path), 4 if pid == 1 else pid, 3, Modality.INFRARED))
    trial = Trial("toy.ir2vis", 0, tuple(q_records), g_records, rule="regdb", max_rank=5)
    qf, gf = trial_features(trial, extractor)
    torch.testing.assert_close(qf, extractor([r.path for r in q_records], "infrared"))
    rows, worst, aps = worst_query_rows(trial, qf, gf, 2, top=4)
    sim = qf @ gf.T
    g_pids = [r.pid for r in g_records]
    expected = [reference_ap(sim[i], g_pids, q_records[i].pid, [True] * len(g_pids)) for i in range(len(q_records))]
    assert worst == sorted(range(len(expected)), key=lambda i: expected[i])[:2] and 0 in worst
    np.testing.assert_allclose(aps, [expected[i] for i in worst], rtol=1e-6)
    assert [len(r.gallery) for r in rows] == [4, 4]
    path = save_worst_queries(trial, 2, tmp_path / "ranklists", extractor=extractor, top=4)
    assert path.name == "toy.ir2vis.trial0.worst2.png"
    assert Image.open(path).size == (8 + 72 + 16 + 4 * 72 + 3 * 4 + 8, 8 + 2 * 150 + 10 + 8)


def test_worst_query_pictures_leave_out_what_the_protocol_discards(tmp_path, extractor, gallery, evaluation_package):
    from vireid.data.records import ImageRecord, Modality
    from vireid.evaluation.trial import Trial
    from vireid.visualize import worst_query_rows

    root, written = gallery
    # SYSU rule: a cam3 query discards every cam2 gallery image; here identities 1-2 are in cam2.
    g_records = tuple(ImageRecord(str(root / rel), pid, 2 if pid <= 2 else 1, Modality.VISIBLE) for rel, pid in written)
    q_records = (ImageRecord(str(root / written[0][0]), 3, 3, Modality.INFRARED),)
    trial = Trial("toy.sysu", 0, q_records, g_records, rule="sysu", max_rank=5)
    rows, _, _ = worst_query_rows(
        trial, *(extractor([r.path for r in rs], "visible") for rs in (q_records, g_records)), 1, top=15
    )
    assert len(rows[0].gallery) == sum(1 for _, pid in written if pid > 2)  # only the cam1 images are drawn


def test_vireid_test_visualize_writes_the_worst_query_pictures(tmp_path, ckpt, evaluation_package):
    from layout_builders import build_sysu, default_sysu_folders
    from vireid.engine.testing import test_checkpoint as run_test  # renamed: not a pytest test

    root = build_sysu(tmp_path / "SYSU-MM01", default_sysu_folders(), (1, 2, 3, 4), (5, 6), (7, 8, 9, 10, 11))
    out = tmp_path / "test"
    run_test(
        ckpt,
        root=str(root),
        protocols=["sysu.all.single.random"],
        trials=1,
        visualize=3,
        out=out,
        console=Console(record=True),
    )
    (picture,) = (out / "ranklists").iterdir()
    assert picture.name == "sysu.all.single.random.trial0.worst3.png"
    width, height = Image.open(picture).size
    assert height == 8 + 3 * 150 + 2 * 10 + 8 and 8 + 72 + 16 + 72 + 8 <= width <= 8 + 72 + 16 + 10 * 76 - 4 + 8
