"""Review app: sign-in, path safety, each page's content, filters and pagination (Streamlit AppTest) on a
small real run (a tiny model trained, evaluated and explained by the project's own steps), and on gs://."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from histoxai import config as configs
from histoxai import plots, storage
from histoxai.app import auth, data, figures, render, runs, tiles
from histoxai.app.settings import ENV
from histoxai.cli import main
from histoxai.colour import COLOUR_MAPS
from histoxai.errors import InputError
from histoxai.training import train
from tests import app_browser
from tests.train_data import write_blob_manifest

pytestmark = pytest.mark.slow  # a long file: it starts first (tests/conftest.py)
MAIN = str(Path(auth.__file__).with_name("main.py"))
PASSWORD = "correct horse battery"
TINY = {"backbone": "tiny", "weights": None, "image_size": 32, "batch_size": 16, "frozen_epochs": 1,
        "finetune_epochs": 1, "patience": 5, "lr_schedule": "none", "learning_rate": 3e-3,
        "dense_units": 16, "feature_units": 8, "targets": ["MD", "FA", "CC"]}
PHANTOM_VOXEL = ("1", 0, 2)  # a test-set patch of sample 1 (checked in the fixture)
BLOCK = 20  # phantom truth pixels per voxel


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """root/run: split (80 blob patches, 2 samples), models/tiny (MD, FA, CC), evaluate, explain (test and
    val patches; gradcam++ and SmoothGrad at two sigmas), a phantom truth for sample 1; root/users.yaml."""
    root = tmp_path_factory.mktemp("app")
    folder = root / "run"
    write_blob_manifest(folder / "split", n=80, size=32, seed=5)
    train(configs.from_dict(TINY), str(folder / "split"), str(folder / "models" / "tiny"))
    assert main(["evaluate", "--model", f"tiny={folder / 'models' / 'tiny'}", "--data", str(folder / "split"),
                 "--summary", "", "--out", str(folder / "evaluate")]) == 0
    assert main(["explain", "--model", str(folder / "models" / "tiny"), "--data", str(folder / "split"),
                 "--out", str(folder / "explain"), "--splits", "test,val", "--methods",
                 "gradcam++,smoothgrad:sigma=0.2,n=4,smoothgrad:sigma=0.3,n=4", "--trust-patches", "4",
                 "--trust-steps", "2", "--randomize-blocks", "1"]) == 0
    table = pd.read_parquet(folder / "explain" / "maps.parquet")
    keys = set(zip(table["sample"], table["row"], table["col"], strict=True))
    sample, row, col = next(k for k in sorted(keys) if k[0] == "1")
    truth = folder / "phantom" / sample / "phantom_truth"
    truth.mkdir(parents=True)
    grid = (int(table["row"].max()) + 1, 16)
    (truth / "targets.json").write_text(json.dumps({"image_shape": [grid[0] * BLOCK, grid[1] * BLOCK],
                                                    "grid": list(grid)}))
    labels = np.zeros((grid[0] * BLOCK, grid[1] * BLOCK), np.uint32)
    labels[row * BLOCK + 5:row * BLOCK + 15, col * BLOCK + 5:col * BLOCK + 15] = 7  # one square nucleus
    with h5py.File(truth / "nuclei_labels.h5", "w") as h5:
        h5["labels"] = labels
    users = root / "users.yaml"
    users.write_text(f"alice: '{auth.hash_password(PASSWORD, rounds=4)}'\n")
    return {"root": root, "run": folder, "users": users, "table": table, "nucleus": (sample, row, col)}


@pytest.fixture
def app_env(run, monkeypatch):
    for variable in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(ENV["run"], str(run["run"]))
    monkeypatch.setenv(ENV["users_file"], str(run["users"]))
    return monkeypatch


def _app(signed_in: bool = True, page: str | None = None) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    if signed_in:
        at.session_state[auth.SESSION_USER] = "alice"
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _captions(at) -> list[str]:
    """Captions of the pictures in the main area (the sidebar's are histograms)."""
    return [caption for image in at.main.image for caption in image.captions]


# ---- sign-in ----

def test_nothing_is_shown_before_sign_in_and_a_wrong_password_is_refused(run, app_env):
    at = _app(signed_in=False)
    assert [t.value for t in at.title] == ["histoxai review"]
    assert not at.image and not at.dataframe and not at.sidebar.text_input and not at.markdown
    at.text_input(key="sign_in_name").input("alice")
    at.text_input(key="sign_in_password").input("wrong")
    at.button[0].click().run()
    assert [e.value for e in at.error] == ["Unknown user name or wrong password."]
    assert not at.dataframe
    at.text_input(key="sign_in_name").input("alice")
    at.text_input(key="sign_in_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.error and at.dataframe  # the Main page's outputs table
    assert any(b.label == "Sign out (alice)" for b in at.sidebar.button)


def test_a_page_asked_for_before_sign_in_shows_only_the_form(run, app_env):
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.switch_page("page_single_target.py").run()
    assert not at.image and not at.pagination and [t.value for t in at.title] == ["histoxai review"]


def test_users_file_and_passwords(tmp_path):
    hashed = auth.hash_password("pw", rounds=4)
    users = auth.parse_users(f"bob: '{hashed}'\n", "users.yaml")
    assert auth.check_password(users, "bob", "pw")
    assert not auth.check_password(users, "bob", "PW") and not auth.check_password(users, "eve", "pw")
    assert not auth.check_password(users, "bob", "x" * 100)
    for text, expected in (("- bob", "mapping"), ("bob: plain", "bcrypt hash"), ("bob: [", "not valid YAML")):
        with pytest.raises(InputError, match=expected):
            auth.parse_users(text, "users.yaml")
    result = subprocess.run([sys.executable, "-m", "histoxai.cli", "app", "--hash-password", "carol"],
                            input="s3cret\n", capture_output=True, text=True, check=True)
    users = auth.parse_users(result.stdout, "stdout")
    assert auth.check_password(users, "carol", "s3cret")


def test_cli_refuses_bad_settings_with_one_line(run, tmp_path, capsys, monkeypatch):
    for variable in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("alice: not-a-hash\n")
    cases = [(["app", "--run", str(run["run"])], "no users for password sign-in"),
             (["app", "--run", str(run["run"]), "--users", str(bad)], "expected a bcrypt hash"),
             (["app", "--run", str(run["root"]), "--root", str(run["run"]), "--users", str(run["users"])],
              "outside the app's root"),
             (["app", "--run", str(run["run"] / "missing"), "--users", str(run["users"])], "not found"),
             (["app", "--run", str(run["run"]), "--users", str(run["users"]), "--trusted-proxies", "one"],
              "--trusted-proxies='one': expected a whole number"), (["app"], "--run: missing")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, (argv, err)


# ---- path safety ----

def test_run_paths_cannot_leave_the_root(run, tmp_path):
    root = str(run["run"])
    assert runs.resolve_run(root, "") == runs.normalize(root)
    assert runs.resolve_run(root, "explain") == runs.normalize(run["run"] / "explain")
    assert runs.resolve_run(root, str(run["run"] / "evaluate")) == runs.normalize(run["run"] / "evaluate")
    escape = tmp_path / "link"
    escape.symlink_to("/etc")
    (run["run"] / "sneaky").symlink_to(tmp_path)
    for requested in ("..", "../..", "explain/../../", "/etc", str(run["root"]), "sneaky", "sneaky/link",
                      "gs://bucket/x"):
        with pytest.raises(InputError, match="outside the app's root"):
            runs.resolve_run(root, requested)
    (run["run"] / "sneaky").unlink()
    assert runs.resolve_run("gs://b/root", "a/../c") == "gs://b/root/c"
    for requested in ("../x", "../../../../x", "gs://b/root2", "gs://b/rootx/y", "/tmp"):
        with pytest.raises(InputError, match="outside the app's root"):
            runs.resolve_run("gs://b/root", requested)


def test_a_run_from_the_url_or_the_sidebar_outside_the_root_is_refused(run, app_env):
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state[auth.SESSION_USER] = "alice"
    at.query_params["run"] = "../"
    at.run()
    assert any("outside the app's root" in e.value for e in at.error)
    assert not at.dataframe and not at.image
    at = _app()
    at.sidebar.text_input[0].input("../../").run()
    assert any("outside the app's root" in e.value for e in at.error) and not at.dataframe


def test_files_outside_the_root_are_not_read(run):
    table = run["table"]
    location = tuple(table.iloc[0][list(data.PATCH_LOCATION)])
    assert data.read_patch(location, str(run["run"])).shape == (32, 32, 3)
    with pytest.raises(InputError, match="patch shard outside the app's root"):
        data.read_patch(location, str(run["run"] / "explain"))


# ---- pages ----

def test_main_page_shows_outputs_models_reports_and_links(run, app_env):
    at = _app()
    outputs = at.dataframe[0].value
    assert set(outputs["output"]) >= {"saliency maps", "evaluation", "trained model", "split manifest",
                                      "phantom truth"}
    summary = at.dataframe[1].value
    assert summary["maps"].sum() == len(run["table"]) and set(summary["target"]) == {"MD", "FA", "CC"}
    text = " ".join(m.value for m in at.markdown)
    assert "Table 4.1" in text and "Saliency trust report" in text and "![" not in text
    assert any("backbone: tiny" in c.value for c in at.code)  # the model's config.yaml
    assert len(at.get("page_link")) == 6  # every other page, and the maps from the evaluation section


def test_single_target_grid_titles_and_pagination(run, app_env):
    at = _app(page="page_single_target.py")
    at.sidebar.selectbox(key="w_per_page").set_value(12).run()
    group = run["table"].query("target == 'MD' and method == 'gradcam++'")
    group = group.sort_values(["sample", "row", "col"])
    assert len(group) == 36 and at.pagination[0].num_pages == 3
    assert len(_captions(at)) == 12
    first = _captions(at)[0]
    assert first.startswith("#0 · y ")
    assert f"y {group['y'].iat[0]:.3g} · ŷ {group['y_hat'].iat[0]:.3g}" in first
    at.pagination[0].set_value(3).run()
    captions = _captions(at)
    assert len(captions) == 12 and captions[0].startswith("#24 ")
    at.sidebar.selectbox(key="w_sort").set_value("|Δ|").run()
    at.sidebar.toggle(key="w_descending").set_value(True).run()
    assert at.pagination[0].value == 1  # a new order starts at the first page
    top = group.loc[group["delta"].abs().idxmax()]
    number = list(zip(group["sample"], group["row"], group["col"], strict=True)).index(
        (top["sample"], top["row"], top["col"]))  # patches are numbered by sample, row, col
    assert _captions(at)[0] == render.tile_title({**top.to_dict(), "patch": number})
    assert sum("tiles" in c.value or "patches pass" in c.value for c in at.caption) == 1
    next(b for b in at.main.button if b.label == "Inspect").click().run()  # the first tile's
    assert [t.value for t in at.title] == ["Multiple Targets"]
    assert at.subheader[0].value.startswith(f"Patch #{number}: sample {top['sample']}")


def test_filters_narrow_the_grid_and_the_histograms_follow(run, app_env):
    at = _app(page="page_single_target.py")
    group = run["table"].query("target == 'MD' and method == 'gradcam++'")
    low, high = float(group["y"].quantile(0.25)), float(group["y"].quantile(0.75))
    at.sidebar.slider(key="w_range_y_tiny_MD").set_value((low, high)).run()
    expected = group[(group["y"] >= low) & (group["y"] <= high)]
    assert any(f"{len(expected)} patches pass the filters" in c.value for c in at.caption)
    ys = [float(c.split(" · ")[1].split()[1]) for c in _captions(at)]
    assert len(ys) == min(24, len(expected)) and all(low * 0.999 <= y <= high * 1.001 for y in ys)
    assert len(at.sidebar.image) == 3  # the histograms of y, Δ and rΔ
    assert any(f"{len(expected)} patches pass the filters" in c.value for c in at.caption)
    at.sidebar.multiselect(key="w_samples").set_value(["2"]).run()
    both = expected[expected["sample"] == "2"]
    assert any(f"{len(both)} patches pass the filters" in c.value for c in at.caption)
    at.sidebar.selectbox(key="w_target").set_value("CC").run()  # another target: its own ranges
    cc = run["table"].query("target == 'CC' and method == 'gradcam++' and sample == '2'")
    assert any(f"{len(cc)} patches pass the filters" in c.value for c in at.caption)


def test_method_settings_are_chosen_per_parameter(run, app_env):
    at = _app(page="page_single_target.py")
    at.sidebar.selectbox(key="w_method").set_value("smoothgrad").run()
    sigma = at.sidebar.selectbox(key="w_param_smoothgrad_sigma")
    assert sigma.options == ["0.2", "0.3"]
    sigma.set_value("0.3").run()
    assert any("(sigma=0.3,n=4,seed=0)" in c.value for c in at.caption)


def test_multiple_targets_and_multiple_methods_show_one_patch(run, app_env):
    at = _app(page="page_multiple_targets.py")
    captions = _captions(at)
    assert captions[0] == "patch" and [c.split(" · ")[0] for c in captions[1:]] == ["MD", "FA", "CC"]
    assert all(c.split(" · ")[-5].startswith("#0") for c in captions[1:])
    at.button[1].click().run()  # Next
    assert all("#1 " in c for c in _captions(at)[1:])

    at.switch_page("page_multiple_methods.py").run()  # the patch is remembered across pages
    captions = _captions(at)
    assert captions[0] == "patch" and len(captions) == 4
    assert captions[1].startswith("gradcam++") and "sigma=0.3" in captions[3]
    assert sum(c.value.startswith("NaN maps") for c in at.caption) == 3  # trust under each method
    assert any("#1 · y" in c.value for c in at.caption)


def test_sample_maps_page_shows_a_voxels_values_and_patch(run, app_env):
    at = _app(page="page_sample_maps.py")
    sample, row, col = run["nucleus"]
    at.sidebar.selectbox(key="w_maps_target").set_value("CC")
    at.sidebar.selectbox(key="w_maps_sample").set_value(sample).run()
    at.number_input(key="w_voxel_row").set_value(row)
    at.number_input(key="w_voxel_col").set_value(col).run()
    arrays = np.load(run["run"] / "evaluate" / "maps" / "tiny" / sample / "CC.npz")
    assert any(c.value.startswith(f"measured {arrays['measured'][row, col]:.4g} · predicted "
                                  f"{arrays['predicted'][row, col]:.4g}") for c in at.caption)
    captions = _captions(at)
    assert captions[0] == f"patch, voxel ({row}, {col})" and len(captions) == 4  # patch + 3 methods
    chart = [e for e in at.main if getattr(e, "type", "") == "vega_lite_chart"]
    assert len(chart) == 1
    next(b for b in at.button if b.label == "Open this patch on Multiple Targets").click().run()
    assert [t.value for t in at.title] == ["Multiple Targets"]
    assert any(f"sample {sample}, voxel ({row}, {col})" in h.value for h in at.subheader)


def test_phantom_nuclei_outline(run, app_env):
    sample, row, col = run["nucleus"]
    masks = data.nuclei_masks([str(run["run"] / "phantom")], [(sample, row, col), ("2", 0, 0)], 32,
                              str(run["run"]))
    assert list(masks) == [(sample, row, col)]  # sample 2 has no truth
    mask = masks[(sample, row, col)]
    assert mask[16, 16] and not mask[2, 2] and 0.15 < mask.mean() < 0.4  # the square, resized to 32 px
    edge = render.outline(mask)
    patch = np.zeros((32, 32, 3), np.uint8)
    drawn = render.overlay(patch, None, "viridis", 0.5, edge)
    assert (drawn[edge] == 255).all() and (drawn[~edge] == 0).all() and not edge[16, 16]
    at = _app(page="page_multiple_targets.py")
    assert at.sidebar.toggle(key="w_outlines").value is False
    at.sidebar.toggle(key="w_outlines").set_value(True).run()
    assert not at.exception and len(_captions(at)) == 4


def test_overlay_normalisation_and_colour_maps():
    raw = np.array([[0.0, 1.0], [2.0, np.nan]], np.float32)
    per_map = render.normalise(raw, render.NORMALISATIONS[1], (0.0, 4.0))
    assert per_map[0, 1] == 0.5 and np.isnan(per_map[1, 1])
    assert render.normalise(raw, render.NORMALISATIONS[0], (0.0, 4.0))[1, 0] == 0.5
    patch = np.full((2, 2, 3), 100, np.uint8)
    out = render.overlay(patch, np.array([[0.0, 1.0], [1.0, np.nan]]), "gray", 0.5)
    assert out[0, 0].tolist() == [50, 50, 50] and out[0, 1].tolist() == [178, 178, 178]
    assert out[1, 1].tolist() == [100, 100, 100]  # NaN: the patch alone
    assert set(COLOUR_MAPS) >= {"viridis", "magma", "jet"}


# ---- IAP ----

def test_iap_mode_refuses_requests_without_a_valid_signed_header(run, app_env, tmp_path):
    import time as clock

    from google.auth import jwt

    now = int(clock.time())
    with app_browser.iap_keys() as (signer, certs):
        def token(**claims):
            base = {"iss": "https://cloud.google.com/iap", "aud": "/projects/1/apps/x",
                    "email": "r@example.org", "iat": now, "exp": now + 600}
            return jwt.encode(signer, {**base, **claims}).decode()

        assert auth.verify_iap(token(), "/projects/1/apps/x", certs) == "r@example.org"
        for bad, message in ((token(aud="/projects/2/apps/y"), "rejected"), (token(exp=now - 60), "rejected"),
                             (token(iss="https://evil"), "not issued by IAP")):
            with pytest.raises(InputError, match=message):
                auth.verify_iap(bad, "/projects/1/apps/x", certs)
    app_env.setenv(ENV["auth"], "iap")
    app_env.setenv(ENV["iap_audience"], "/projects/1/apps/x")
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert [e.value for e in at.error] == ["Sign-in required: this app is served through Identity-Aware "
                                           "Proxy only."]
    assert not at.dataframe and not at.title and not at.text_input


# ---- gs:// ----

def test_a_run_on_gcs(run, gcs_bucket, app_env):
    uri = f"{gcs_bucket}/runs/r1"
    for path in sorted(p for p in run["run"].rglob("*") if p.is_file() and "models" not in p.parts):
        storage.upload_file(path, storage.join(uri, path.relative_to(run["run"]).as_posix()))
    index = runs.discover(uri)
    assert index.explain == (f"{uri}/explain",) and index.split == (f"{uri}/split",)
    assert index.phantom == (f"{uri}/phantom",)
    app_env.setenv(ENV["run"], uri)
    app_env.setenv(ENV["root"], gcs_bucket + "/runs")
    at = _app(page="page_single_target.py")
    assert len(_captions(at)) == 24 and _captions(at)[0].startswith("#0 ")
    shown = {i.value[0] for i in at.main.image}
    assert len(shown) > 1
    at.sidebar.text_input[0].input("../other").run()
    assert any("outside the app's root" in e.value for e in at.error)


def test_trust_lines_lead_with_the_verdict_and_never_pass_an_undefined_check():
    trust = pd.DataFrame([{"model": "m", "target": "CC", "method": "vanilla", "setting": "",
                           "score": "increase", "nan_maps": 0.0, "blank_maps": 1.0,
                           "verdict": "does not beat: darkness, edges",
                           "randomization": "undefined", "rho: head + 2 blocks": float("nan")}])
    lines = tiles.trust_lines(trust, ("m", "CC", "vanilla", "", "increase"))
    assert lines[0] == "verdict: does not beat: darkness, edges"
    assert lines[-1].endswith("⚠ check undefined")


def test_main_page_shows_learning_curves_and_measured_vs_predicted(run, app_env):
    at = _app()
    captions = _captions(at)
    assert captions[0] == "learning curves: models/tiny"
    assert captions[1:] == [f"model tiny, {t}: measured vs predicted (test set and held-out samples)"
                            for t in ("MD", "FA", "CC")]
    assert [s.value for s in at.subheader if "Learning" in s.value or "Measured" in s.value] == [
        "Learning curves", "Measured vs predicted (evaluate)"]
    assert len({i.value[0] for i in at.main.image}) == 4  # four different pictures
    # the pictures are histoxai.plots' drawings of the run's own files, read inside the root only
    folder, root = run["run"], str(run["root"])
    history = pd.read_csv(folder / "models" / "tiny" / "history.csv")
    curves = figures.learning_curves(str(folder / "models" / "tiny"), root, "model models/tiny")
    assert curves == plots.learning_curves(history, "model models/tiny")
    scatter = dict(figures.scatter_plots(str(folder / "evaluate"), root))
    assert Image.open(io.BytesIO(scatter[captions[1]])).size == (550, 500)
    with pytest.raises(InputError, match="outside the app's root"):
        figures.learning_curves(str(folder / "models" / "tiny"), str(folder / "split"), "x")
