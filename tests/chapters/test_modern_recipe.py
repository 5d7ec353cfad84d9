"""The modern recipe chapter: the network's shapes and size, the recipe as defaults, an honest split."""

from chapter_helpers import param_count
from conftest import run_chapter

from bench.ablation import BOOK, ROWS, command_line
from chapters import modern_recipe
from d2lite.recipe import Recipe


def test_layer_summary_halves_the_image_three_times():
    assert modern_recipe.ResNet9(width=8).layer_summary((1, 28, 28, 1)) == [
        ("Sequential", (1, 28, 28, 8)),
        ("Sequential", (1, 14, 14, 16)),
        ("Sequential", (1, 7, 7, 32)),
        ("Sequential", (1, 3, 3, 64)),
        ("lambda", (1, 64)),
        ("Dense", (1, 10)),
        ("lambda", (1, 10)),
    ]


def test_parameter_count():
    w = 64

    def conv_bn(c_in, c_out):  # no bias: BatchNorm's scale and offset follow
        return 9 * c_in * c_out + 2 * c_out

    def residual(c):  # the book's block: two biased 3x3 convolutions, each with BatchNorm
        return 2 * (9 * c * c + c + 2 * c)

    expected = conv_bn(1, w) + conv_bn(w, 2 * w) + residual(2 * w) + conv_bn(2 * w, 4 * w)
    expected += conv_bn(4 * w, 8 * w) + residual(8 * w) + 8 * w * 10 + 10
    assert param_count(modern_recipe.ResNet9(), (1, 28, 28, 1)) == expected == 6_573_258


def test_quick_run_validates_on_held_out_images_and_tests_once(tmp_path, capsys):
    chapter = run_chapter(
        "modern_recipe", "--quick", "--width", "4", "--batch-size", "32", "--out-dir", str(tmp_path)
    )
    assert chapter["trainer"].recipe == Recipe(**modern_recipe.RECIPE)  # the chapter's defaults
    data, trainer = chapter["data"], chapter["trainer"]
    assert data.holdout == 5000 and data.arrays(False)[0].shape == (64, 28, 28)  # --quick: 2 batches of it
    assert trainer.data is not data and trainer.data.holdout is None  # then the test images, once
    assert trainer.num_val_examples == 64
    out = capsys.readouterr().out
    assert "validation accuracy: " in out and "(the 64 held-out training images)" in out
    assert "test accuracy: " in out and " s since the process started" in out
    assert "recipe: crop 2, flip, erase 0.5, cosine (warmup 1 epoch), label smoothing 0.1" in out


def test_the_ablation_adds_one_ingredient_a_row_to_the_books_recipe():
    flags = command_line(BOOK)
    assert flags[flags.index("--optimizer") + 1] == "sgd" and "--no-flip" in flags
    settings = dict(BOOK)
    for _, changes in ROWS:
        settings |= changes
    flags = command_line(settings)
    assert "--no-flip" not in flags and "--flip" in flags and "--tta-flip" in flags
    assert flags[flags.index("--erase") + 1] == "0.5" and flags.count("--erase") == 1
    assert flags[flags.index("--optimizer") + 1] == "nesterov"
    # the last row is the chapter's own recipe
    values = {flags[i]: flags[i + 1] for i in range(len(flags) - 1) if not flags[i + 1].startswith("--")}
    assert float(values["--weight-decay"]) == modern_recipe.RECIPE["weight_decay"]
    assert float(values["--ema"]) == modern_recipe.RECIPE["ema"]
