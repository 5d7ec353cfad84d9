"""The results report: a table per chapter and one figure, from the run directories."""

import shutil

import jax
from conftest import Blobs, TinyCNN

import d2lite as d2l
from d2lite.runs import directory as runs
from d2lite.runs import report


def tiny_run(run_dir, chapter, **model):
    trainer = d2l.Trainer(
        max_epochs=2,
        run_dir=run_dir,
        run_info={"chapter": chapter},
        progress=False,
        plot=False,
        limit_train_batches=4,
    )
    trainer.fit(TinyCNN(**model), Blobs())
    return trainer


def test_report_from_two_runs(tmp_path, capsys):
    root = tmp_path / "runs"
    alpha = tiny_run(root / "alpha" / "20250101-120000", "alpha")
    beta = tiny_run(root / "beta" / "20250101-130000", "beta", use_bn=False, lr=0.05)
    # A copy of alpha's run that planned more epochs and was resumed once: 2 of 4 done.
    unfinished = shutil.copytree(root / "alpha" / "20250101-120000", root / "alpha" / "20250102-090000")
    config = runs.read_config(unfinished)
    config["trainer"]["max_epochs"] = 4
    config["resumed"] = [{"step": 4}]
    runs.write_config(unfinished, config)

    assert report.main(["--runs", str(root)]) == 0
    printed = capsys.readouterr().out
    text = (root / "REPORT.md").read_text()
    assert text in printed and f"wrote {root / 'REPORT.md'}" in printed
    assert "3 runs of 2 chapters" in text
    assert "![Validation accuracy of each chapter's best run](report.png)" in text
    assert (root / "report.png").read_bytes()[:4] == b"\x89PNG"

    sections = text.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["alpha", "beta"]
    header = (
        "| run | model | parameters | epochs | best val acc | final val acc | examples/s "
        "| training time | first epoch extra s | device |"
    )
    assert all(header in s for s in sections)
    rows = {
        line.split(" | ")[0][3:-1]: line.strip("| ").split(" | ")
        for s in sections
        for line in s.splitlines()
        if line.startswith("| `")
    }
    assert sorted(rows) == ["alpha/20250101-120000", "alpha/20250102-090000", "beta/20250101-130000"]
    for run, trainer in (("alpha/20250101-120000", alpha), ("beta/20250101-130000", beta)):
        accuracies = [r["val_acc"] for r in trainer.history]
        best = max(accuracies)
        row = rows[run]
        parameters = sum(p.size for p in jax.tree.leaves(trainer.state.params))
        assert row[1:4] == ["TinyCNN", f"{parameters:,}", "2/2, 4 batches"]  # of each epoch
        assert row[4] == f"{best:.3f} (epoch {accuracies.index(best) + 1})"
        assert row[5] == f"{accuracies[-1]:.3f}"
        speeds = sorted(r["examples_per_s"] for r in trainer.history)
        assert row[6] == f"{(speeds[0] + speeds[1]) / 2:,.0f}"  # the median of two
        seconds = [r["seconds"] for r in trainer.history]
        assert row[8] == f"{seconds[0] - seconds[1]:.1f}"  # the first epoch compiled
        assert row[9].startswith("cpu (") and row[9].endswith("cores)")
    assert rows["beta/20250101-130000"][2] == "811"  # no BatchNorm: 8 fewer parameters
    assert rows["alpha/20250102-090000"][3] == "2/4, 4 batches, resumed 1x"
    assert rows["alpha/20250102-090000"][8] == "-"  # a resumed run compiled again in its later sessions


def test_report_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert report.main(["--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: no runs in {tmp_path}/ (no config.json below it): train a chapter first, e.g. make lenet\n"
    )


def test_chapter_falls_back_to_the_parent_folder(tmp_path):
    run_dir = tmp_path / "lenet" / "20250101-120000"
    runs.write_config(run_dir, {"model": {"class": "chapters.lenet.LeNet"}})
    (found,) = report.collect(tmp_path)
    assert found["chapter"] == "lenet" and found["history"] == [] and found["best"] is None
    text = report.write_report(tmp_path)
    assert "| `lenet/20250101-120000` | LeNet | ? | 0/? | - | - | - | - | - | ? |" in text
    assert "report.png" not in text and not (tmp_path / "report.png").exists()
