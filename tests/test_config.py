"""Config validation: every bad value gives one `key: ...` line; numbers in any notation; recipes by name; the key table
of --help; property tests that the override and index-file parsers never fail with anything but their one-line error."""
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vjepa_fast import train
from vjepa_fast.config import ConfigError, iter_keys, load_config, packaged_configs, parse_override
from vjepa_fast.data.index import read_index_file


@pytest.mark.parametrize("overrides, key", [
    (["optim.eps=-1"], "optim.eps"),
    (["optim.eps=0"], "optim.eps"),
    (["optim.betas=[2,3]"], "optim.betas"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["optim.weight_decay=-1"], "optim.weight_decay"),
    (["optim.lr=nan"], "optim.lr"),
    (["optim.lr=abc"], "optim.lr"),
    (["masks.short_blocks=0"], "masks.short_blocks"),
    (["masks.short_scale=1.0"], "masks.short_blocks / masks.short_scale"),  # one block covers the whole grid
    (["masks.long_scale=1.0"], "masks.long_blocks / masks.long_scale"),
    (["method=videomae", "masks.tube_ratio=0.999"], "masks.tube_ratio"),
    (["model.pred_width=7"], "model.pred_width"),
    (["model.pred_depth=0"], "model.pred_depth"),
    (["backends.gather=turbo"], "backends.gather"),
    (["backends.warp=auto"], "backends.warp"),
    (["run_dir="], "run_dir"),
    (["data.path="], "data.path"),
    (["train.init_from="], "train.init_from"),
    (["train.steps=99999999999999999999999"], "train.steps"),
    (["train.tensorboard=maybe"], "train.tensorboard"),
    (["train.seed=2020-13-45"], "train.seed"),
    (["=3"], "'=3'"),
    (["model.__class__=1"], "model.__class__"),
])
def test_bad_value_is_one_line_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg, msg


@pytest.mark.parametrize("typo, meant", [("train.setps", "train.steps"), ("trian.steps", "train.steps"),
                                          ("steps", "train.steps"), ("data.pth", "data.path"),
                                          ("model.pred_dpth", "model.pred_depth")])
def test_unknown_key_names_the_nearest_valid_keys(typo, meant, tmp_path):
    for how in ("override", "file"):
        with pytest.raises(ConfigError) as err:
            if how == "override":
                load_config(None, [f"{typo}=1"])
            else:
                path = tmp_path / "typo.yaml"
                path.write_text(f"{typo}: 1\n")
                load_config(str(path))
        msg = str(err.value)
        assert msg.startswith(f"{typo}: unknown key (did you mean ") and "\n" not in msg
        suggested = msg.split("did you mean ", 1)[1].rstrip("?)").split(" or ")
        assert meant in suggested and len(suggested) <= 3
        assert all(key in {k for k, *_ in iter_keys(load_config(None, []))} for key in suggested)


def test_unknown_key_with_nothing_near_points_to_help():
    with pytest.raises(ConfigError, match=r"^zzz\.qqq: unknown key \(--help lists every key\)$"):
        load_config(None, ["zzz.qqq=1"])


def test_numbers_in_any_notation(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-4", "train.steps=1e3", "optim.eps=1E-9"])
    assert (cfg.optim.lr, cfg.train.steps, cfg.optim.eps) == (1e-4, 1000, 1e-9)
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 1e-4, betas: ['9e-1', 0.95]}\ntrain: {steps: 2e2}\n")  # YAML 1.1 reads 1e-4 as text
    cfg = load_config(str(path))
    assert (cfg.optim.lr, cfg.optim.betas, cfg.train.steps) == (1e-4, (0.9, 0.95), 200)


def test_yaml_files_that_cannot_be_read(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    missing = tmp_path / "m.yaml"
    missing.write_text("base: nowhere.yaml\n")
    for path, words in ((binary, "not a text"), (a, "loops"), (missing, "nowhere.yaml")):
        with pytest.raises(ConfigError, match=words) as e:
            load_config(str(path))
        assert str(e.value).startswith("--config") and "\n" not in str(e.value)


def test_packaged_recipes_by_name():
    assert {"tiny", "vitl16", "videomae_tiny"} <= set(packaged_configs())
    assert load_config("tiny").run_dir == "runs/tiny"
    assert load_config("videomae_tiny.yaml").method == "videomae"
    with pytest.raises(ConfigError, match="packaged recipes: .*tiny"):
        load_config("nonesuch")


def test_help_names_every_key_with_type_default_and_meaning(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for key, value, _typ, meaning in iter_keys(load_config(None)):
        if key == "backends":
            assert "backends.gather" in text and "reference" in text
            continue
        assert meaning, f"{key} has no one-line meaning (a trailing comment on its field)"
        line = next((ln for ln in text.splitlines() if ln.split()[:1] == [key]), None)
        assert line is not None and meaning in line, key


def test_print_config_prints_the_resolved_config(capsys):
    assert train.main(["--config", "tiny", "--print-config", "train.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "run_dir: runs/tiny" in out


# ---- property tests: arbitrary input gives the parser's one-line error or a valid result -------------------------
KEYS = [k for k, *_ in iter_keys(load_config(None)) if k != "backends"] + ["backends.gather", "backends.ema"]
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(texts, st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), texts)))
def test_any_override_is_valid_or_one_config_error(text):
    try:
        load_config(None, [text])
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), texts))
def test_main_answers_any_override_in_one_line(text):
    import contextlib
    import io

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = train.main(["--print-config", text])
    if code == 0:
        assert out.getvalue() and not err.getvalue()
    else:
        lines = err.getvalue().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("config error: "), err.getvalue()


index_lines = st.lists(st.one_of(
    st.text(alphabet=string.printable, max_size=30),
    st.builds(lambda p, n: f"{p} {n}", st.text(alphabet=string.ascii_letters + "/._", min_size=1, max_size=12),
              st.integers(min_value=-2**80, max_value=2**80))), max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(index_lines.map("\n".join), index_lines.map(lambda ls: "path,label\n" + "\n".join(ls))),
       st.binary(max_size=8))
def test_any_index_file_parses_or_fails_in_one_line(tmp_path, text, junk):
    path = tmp_path / "index.txt"
    path.write_bytes(text.encode() + junk)
    try:
        entries = read_index_file(path)
    except ValueError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e), str(e)
    else:
        assert all(-2**63 <= e.label < 2**63 for e in entries)


def test_override_parser_keeps_text_it_cannot_read_as_yaml():
    assert parse_override("data.path=a: b: c") == ("data.path", "a: b: c")


yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.sampled_from(KEYS + ["base", "train", "x"]),
                                                                   inner, max_size=3)), max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=64), yaml_values.map(lambda v: yaml.safe_dump(v).encode())))
def test_any_config_file_is_valid_or_one_config_error(tmp_path, content):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    try:
        load_config(str(path))
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


@pytest.mark.parametrize("char", ["\x1e", "\x1c", "\u2028", "\x85", "\r", "\x0b", "\x1b", "\u200e"])
def test_a_control_character_in_an_override_stays_escaped_in_the_one_line_error(char):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = train.main(["--print-config", f"backends.attention_tuning=0{char}1"])
    lines = err.getvalue().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("config error: "), err.getvalue()
    assert char not in err.getvalue()


def test_single_line_escapes_every_line_breaking_character_and_keeps_the_rest():
    from vjepa_fast.config import single_line

    breakers = [chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) > 1]
    text = "ok é ü 中 " + "".join(breakers) + "\x1b[31m"
    out = single_line(text)
    assert len(out.splitlines()) == 1 and out.startswith("ok é ü 中 ")
    assert all(ch not in out for ch in breakers) and "\x1b" not in out


def test_a_bare_run_is_the_tiny_recipe_with_sigreg_and_every_other_recipe_keeps_the_original_objective(capsys):
    from vjepa_fast.config import dump_config

    assert train.main(["--print-config"]) == 0
    bare = capsys.readouterr().out
    assert bare == dump_config(load_config("tiny"))
    assert load_config("tiny").loss.sigreg == 0.3
    others = [name for name in packaged_configs() if name != "tiny"]
    assert others and all(load_config(name).loss.sigreg == 0.0 for name in others), others
    assert load_config(None).loss.sigreg == 0.0  # the library default is the original objective
