"""Stage code dependencies from the import graph (bcd.codedeps); the check against what jobs
really load is in tests/test_end_to_end.py."""
from bcd import codedeps as C
from bcd import params as P


def test_no_import_cycle_among_bcd_modules_counting_imports_inside_functions():
    assert C.import_cycles() == []


def test_imports_inside_functions_count():
    assert "bcd.evaluate" in C.imports_of("bcd.train")          # inside train_student
    assert "bcd.mm.configs" in C.imports_of("bcd.runtime")      # inside require_dataset
    assert "bcd.mm" in C.imports_of("bcd.mm.configs")           # the package runs first


def test_every_stage_depends_on_the_params_module_and_its_own_command():
    for kind, mods in C.STAGE_MODULES.items():
        files = P.code_files(str(C.ROOT / f) for f in C.stage_code(kind))
        for need in ("bcd/params/__init__.py", "bcd/params/validate.py", "bcd/cli.py",
                     "bcd/__main__.py", "bcd/codedeps.py",
                     *(C.module_path(m).relative_to(C.ROOT).as_posix() for m in mods)):
            assert str(C.ROOT / need) in files, (kind, need)


def test_the_table_stage_does_not_depend_on_training_code():
    files = C.stage_files("table")
    assert "bcd/tables.py" in files and C.DATA_FILES["bcd.reference"][0] in files
    assert not any(f.startswith(("bcd/mm/", "bcd/losses/")) or f == "bcd/train.py"
                   for f in files)


def test_complete_folders_are_written_as_folders():
    train = C.stage_code("train")
    assert "bcd/losses" in train and "bcd/mm" in train
    assert not any(f.startswith("bcd/mm/") for f in train)      # not the folder and its files
    assert set(P.code_files(str(C.ROOT / f) for f in train)) == {
        str(C.ROOT / f) for f in C.stage_files("train")}


def test_the_code_digest_changes_with_content_and_carries_the_newest_code_time(tmp_path):
    import json
    import os

    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    os.utime(a, (1000, 1000))
    os.utime(b, (2000, 2000))
    digest = C.write_digest("train", [str(a), str(b)], folder=tmp_path / "d")
    assert digest.stat().st_mtime == 2000  # the newest code file's time, not now
    assert set(json.loads(digest.read_text())["files"]) == {str(a), str(b)}
    os.utime(b, (3000, 3000))  # touched only: same content, the digest stays as it was
    assert C.write_digest("train", [str(a), str(b)], folder=tmp_path / "d").stat().st_mtime == 2000
    a.write_text("x = 3\n")  # edited: a new digest with the edit's time
    os.utime(a, (4000, 4000))
    assert C.write_digest("train", [str(a), str(b)], folder=tmp_path / "d").stat().st_mtime == 4000


def test_the_losses_the_registry_imports_by_name_are_dependencies():
    from bcd import methods

    train = C.stage_files("train")
    for method in methods.declared().values():
        assert C.module_path(method.module).relative_to(C.ROOT).as_posix() in train, method.type
    assert "bcd.losses.feature_l2" in C.imports_of("bcd.mm.registry")
