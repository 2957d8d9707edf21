"""Conditioner layouts and label modes on hand-written scene records (no shards needed)."""

from __future__ import annotations

import pytest
import torch

from lcsbench.data import conditioning as C
from lcsbench.data.scenes import COLOR_NAMES, cell_centre


def make_scene(centres_and_colors, width=64, height=64):
    """A scene record in the renderer's schema with objects at the given (px, py) and colours."""
    objects = [
        {"pixel_coords": [px, py, 10.0], "color": color, "shape": "cube", "size": "small",
         "material": "rubber", "mask_id": i + 1}
        for i, ((px, py), color) in enumerate(centres_and_colors)
    ]
    return {"objects": objects, "num_objects": len(objects), "width": width, "height": height}


# Three objects: (px=5.5, py=60.2) -> row 15, col 1; (px=33.0, py=8.9) -> row 2, col 8;
# (px=63.99, py=0.0) -> row 0, col 15 (cells of 4 px at 64x64, G=16).
SCENE3 = make_scene([((5.5, 60.2), "red"), ((33.0, 8.9), "cyan"), ((63.99, 0.0), "red")])


def test_location_grid_puts_centres_in_row_y_col_x():
    grid = C.location_grid(SCENE3)
    assert grid.dtype == torch.long and grid.shape == (16, 16)
    expected = torch.zeros(16, 16, dtype=torch.long)
    expected[15, 1] = expected[2, 8] = expected[0, 15] = 1
    assert torch.equal(grid, expected)
    # Same result from a bare object list with an explicit size, and a coarser grid.
    assert torch.equal(C.location_grid(SCENE3["objects"], width=64, height=64), expected)
    coarse = C.location_grid(SCENE3, grid_size=4)
    assert coarse[3, 0] == 1 and coarse[0, 2] == 1 and coarse[0, 3] == 1 and coarse.sum() == 3


def test_location_grid_counts_shared_cells_and_clamps_centres_outside():
    scene = make_scene([((10.1, 10.2), "red"), ((11.9, 9.0), "blue"), ((-0.5, 70.0), "gray")])
    grid = C.location_grid(scene)
    assert grid[2, 2] == 2  # two centres in the same 4x4 cell
    assert grid[15, 0] == 1  # a centre just outside the image goes to the nearest edge cell
    assert grid.sum() == 3


def test_location_grid_non_square_image():
    scene = make_scene([((127.0, 10.0), "red")], width=128, height=64)
    grid = C.location_grid(scene)
    assert grid[2, 15] == 1  # x cells are 8 px wide, y cells 4 px high


@pytest.mark.parametrize("grid_size", [12, 0, 5])
def test_grid_size_must_divide_resolution(grid_size):
    with pytest.raises(ValueError, match="does not divide the image size 64x64"):
        C.location_grid(SCENE3, grid_size=grid_size)


def test_location_grid_needs_image_size_for_object_lists():
    with pytest.raises(ValueError, match="image size"):
        C.location_grid(SCENE3["objects"])


def test_color_counts_in_color_names_order():
    counts = C.color_counts(SCENE3)
    assert counts.dtype == torch.long and counts.shape == (8,)
    assert counts[COLOR_NAMES.index("red")] == 2 and counts[COLOR_NAMES.index("cyan")] == 1
    assert counts.sum() == 3
    assert COLOR_NAMES == ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
    assert counts.tolist() == [0, 2, 0, 0, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="unknown CLEVR colour 'pink'"):
        C.color_counts(make_scene([((1, 1), "pink")]))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_label_modes_name_the_right_number_of_objects(n):
    centres = [((4.0 * i + 1.0, 60.0 - 4.0 * i), COLOR_NAMES[i % 8]) for i in range(n)]
    scene = make_scene(centres)
    full = C.location_grid(scene)
    generator = torch.Generator().manual_seed(0)
    seen_random_sizes = set()
    for _ in range(60):
        grids = {mode: C.scene_conditioner(scene, "location", mode, generator=generator) for mode in C.LABEL_MODES}
        assert grids["all"].sum() == n and torch.equal(grids["all"], full)
        assert grids["single"].sum() == 1
        assert grids["drop_one"].sum() == n - 1
        assert 1 <= grids["random"].sum() <= n
        seen_random_sizes.add(int(grids["random"].sum()))
        for mode in ("single", "drop_one", "random"):
            assert (grids[mode] <= full).all()  # only cells of real objects, never more than there are
        colors = C.scene_conditioner(scene, "color", "drop_one", generator=generator)
        assert colors.sum() == n - 1 and (colors <= C.color_counts(scene)).all()
    assert seen_random_sizes == set(range(1, n + 1))  # "random" covers every size 1..n


def test_single_mode_picks_each_object_and_is_reproducible():
    picks = []
    for seed in range(40):
        grid = C.scene_conditioner(SCENE3, "location", "single", generator=torch.Generator().manual_seed(seed))
        picks.append(tuple(grid.nonzero()[0].tolist()))
    assert set(picks) == {(15, 1), (2, 8), (0, 15)}
    again = C.scene_conditioner(SCENE3, "location", "single", generator=torch.Generator().manual_seed(7))
    assert tuple(again.nonzero()[0].tolist()) == picks[7]


def test_random_modes_require_a_generator_and_modes_are_checked():
    with pytest.raises(ValueError, match="generator"):
        C.select_objects(SCENE3["objects"], "single")
    with pytest.raises(ValueError, match="label_mode must be one of"):
        C.select_objects(SCENE3["objects"], "half", torch.Generator())
    with pytest.raises(ValueError, match="conditioning kind"):
        C.scene_conditioner(SCENE3, "shape")
    assert C.select_objects([], "single", torch.Generator()) == []


def test_encode_label_unit_norm_flattened_and_zero_when_empty():
    grids = torch.stack([C.location_grid(SCENE3), torch.zeros(16, 16, dtype=torch.long)])
    grids[0, 2, 8] = 2  # a cell with two centres
    labels = C.encode_label(grids, "location", "unit")
    assert labels.shape == (2, 256) and labels.dtype == torch.float32
    assert torch.allclose(labels[0].norm(), torch.tensor(1.0))
    assert torch.equal(labels[1], torch.zeros(256))
    # Flattening is row-major: cell (row, col) -> index row * G + col; magnitudes keep their ratios.
    assert abs(labels[0, 2 * 16 + 8].item() - 2 / 6**0.5) < 1e-6
    assert abs(labels[0, 15 * 16 + 1].item() - 1 / 6**0.5) < 1e-6
    colors = C.encode_label(torch.tensor([[0, 2, 0, 0, 0, 0, 1, 0]]), "color", "unit")
    assert colors.shape == (1, 8)
    assert torch.allclose(colors, torch.tensor([[0, 2, 0, 0, 0, 0, 1, 0]]) / 5**0.5)
    assert C.encode_label(torch.zeros(8), "color", "unit").abs().sum() == 0
    with pytest.raises(ValueError, match=r"\[\.\.\., G, G\]"):
        C.encode_label(torch.zeros(2, 16, 8), "location")
    with pytest.raises(ValueError, match=r"\[\.\.\., 8\]"):
        C.encode_label(torch.zeros(2, 7), "color")


def test_encode_label_counts_is_the_integer_grid_as_it_is():
    grid = C.location_grid(SCENE3)
    grid[2, 8] = 2
    labels = C.encode_label(grid, "location")  # the default: the paper's "2d integer array" (App. E.1)
    assert labels.dtype == torch.float32 and torch.equal(labels, grid.flatten().float())
    one = torch.zeros(16, 16, dtype=torch.long)
    one[4, 9] = 1  # one object: EDM2's one-hot class label
    assert torch.equal(C.encode_label(one, "location", "counts"), torch.nn.functional.one_hot(
        torch.tensor(4 * 16 + 9), 256).float())
    with pytest.raises(ValueError, match="label_scale must be one of"):
        C.encode_label(grid, "location", "sqrt")


def test_counts_scale_ablating_one_conditioner_leaves_the_others_embedding_unchanged():
    """Eq. 10 ablates one conditioner; under `counts` the label embedding is linear in the counts, so the
    others' contribution does not move (under `unit` every other weight rescales)."""
    from lcsbench.nn.edm2 import preset

    torch.manual_seed(0)
    unet = preset("tiny", label_dim=256).unet
    locations = [(0.2, 0.3), (0.7, 0.6), (0.45, 0.85)]
    full = C.grid_from_locations(locations)
    without_first = C.grid_from_locations(locations[1:])
    alone = C.grid_from_locations(locations[:1])

    def embedding(grid, scale):
        label = C.encode_label(grid[None], "location", scale)
        return unet.emb_label(label * 256 ** 0.5)

    with torch.no_grad():
        removed = embedding(full, "counts") - embedding(without_first, "counts")
        assert torch.allclose(removed, embedding(alone, "counts"), atol=1e-6)  # exactly the ablated object's part
        removed_unit = embedding(full, "unit") - embedding(without_first, "unit")
        assert not torch.allclose(removed_unit, embedding(alone, "unit") / 3 ** 0.5, atol=1e-3)


def test_label_dim():
    assert C.label_dim("location") == 256
    assert C.label_dim("location", grid_size=8) == 64
    assert C.label_dim("color") == 8
    assert C.encode_label(torch.zeros(3, 8, 8), "location").shape[-1] == C.label_dim("location", 8)


def test_paper_constants_and_requested_conditioners():
    assert len(C.PAPER_LOCATIONS) == 12 and C.PAPER_LOCATIONS[1] == (0.65, 0.25)
    # The paper's set is symmetric under swapping x and y, so the x/y convention only orders prefixes.
    assert set(C.PAPER_LOCATIONS) == {(y, x) for x, y in C.PAPER_LOCATIONS}
    grid = C.grid_from_locations(C.PAPER_LOCATIONS)
    assert grid.sum() == 12 and grid.max() == 1  # 12 distinct cells at G=16
    # (x=0.65, y=0.25): column floor(0.65*16)=10, row floor(0.25*16)=4.
    assert C.grid_from_locations(C.PAPER_LOCATIONS[1:2])[4, 10] == 1
    assert C.grid_from_locations([(1.0, 1.0), (1.0, 1.0)])[15, 15] == 2
    with pytest.raises(ValueError, match=r"\(x, y\) pair"):
        C.grid_from_locations([(1.2, 0.5)])
    # A requested location and a rendered object at the same place give the same grid.
    scene = make_scene([((0.65 * 64, 0.25 * 64), "red")])
    assert torch.equal(C.location_grid(scene), C.grid_from_locations([(0.65, 0.25)]))
    row, col = C.location_cell(0.65, 0.25)
    assert C.location_cell(*cell_centre(row, col, 16)) == (row, col)

    assert C.PAPER_COLORS == ("blue", "brown", "cyan", "gray", "green", "purple", "red", "yellow")
    assert sorted(C.PAPER_COLORS) == sorted(COLOR_NAMES)
    counts = C.counts_from_colors(C.PAPER_COLORS[:3])
    assert counts.tolist() == [0, 0, 1, 0, 1, 0, 1, 0]  # blue, brown, cyan in COLOR_NAMES slots
    assert C.counts_from_colors(["red", "red"])[COLOR_NAMES.index("red")] == 2


def test_huge_count_ranges_are_refused_without_building_them():
    from lcsbench.data.scenes import parse_counts

    with pytest.raises(ValueError, match="invalid object counts"):
        parse_counts("1-100000001")
    assert parse_counts("1-12") == tuple(range(1, 13))
