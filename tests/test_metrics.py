"""Pure evaluation metrics (bcd.metrics): Boundary IoU, trimap IoU, region connectivity and the
dataset accumulator. Expected values are worked out by hand in the comments; randomised tests
compare with independent straightforward re-implementations (iterated 3x3 binary erosion of a
padded mask as in the Boundary IoU reference code; shifted-copy comparisons for the trimap;
region-by-region sets for connectivity).

Coordinates below are (row, col), ranges inclusive: "rows 5..14" = rows 5 to 14.
"""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from bcd.metrics import (
    SegmentationQualityAccumulator,
    boundary_iou,
    boundary_iou_counts,
    boundary_width,
    connectivity_counts,
    label_boundary_band,
    region_connectivity,
    trimap_band,
    trimap_iou,
    trimap_iou_counts,
)

IGN = 255


def square(shape, rows, cols, value=1, base=0):
    """Label map filled with ``base`` and ``value`` on rows/cols given as inclusive (lo, hi)."""
    out = np.full(shape, base, dtype=np.int64)
    out[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = value
    return out


# A 32x32 image: diagonal 45.25, d = round(0.02 * 45.25) = round(0.905) = 1.
# gt: class 1 on the 10x10 square rows 5..14, cols 5..14; pred: the same square shifted one pixel
# to the right (cols 6..15); class 0 elsewhere; class 2 nowhere.
GT_SQ = square((32, 32), (5, 14), (5, 14))
PRED_SHIFT = square((32, 32), (5, 14), (6, 15))


def _blobs(shape, num_classes, seed, ignore_frac=0.0):
    """Random smooth label map (blobby regions) with optional ignore patches."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(num_classes, *shape)), sigma=(0, 2.5, 2.5))
    labels = noise.argmax(0).astype(np.int64)
    if ignore_frac:
        patches = ndimage.gaussian_filter(rng.normal(size=shape), 3.0)
        labels[patches > np.quantile(patches, 1 - ignore_frac)] = IGN
    return labels


# ----------------------------------------------------------------------------- Boundary IoU


def test_boundary_width():
    assert boundary_width((32, 32)) == 1            # 0.02 * 45.25 = 0.905 -> 1
    assert boundary_width((8, 8)) == 1              # 0.23 -> 0, clamped to 1
    assert boundary_width((512, 1024)) == 23        # 0.02 * 1144.9 = 22.9
    assert boundary_width((1024, 2048)) == 46       # 0.02 * 2289.7 = 45.8
    assert boundary_width((32, 32), 0.05) == 2      # 2.26


def test_boundary_iou_square_shifted_by_one_pixel():
    # d = 1. Class 1: the inner band of a 10x10 square is its outer ring, 100 - 8*8 = 36 pixels,
    # for gt and pred alike. The rings share rows 5 and 14 on cols 6..14 (9 + 9 = 18 pixels);
    # their vertical sides are cols {5, 14} (gt) and {6, 15} (pred): no overlap.
    # BIoU_1 = 18 / (36 + 36 - 18) = 18 / 54 = 1/3   (mask IoU would be 90/110 = 0.82).
    # Class 0: band = background pixels 8-adjacent to the square = the 12x12 - 10x10 = 44 ring
    # around it (the image border is not a contour by default). gt ring: rows 4, 15 on cols 4..15
    # and cols {4, 15} on rows 5..14; pred ring: rows 4, 15 on cols 5..16, cols {5, 16}. Shared:
    # rows 4 and 15 on cols 5..15 = 22.  BIoU_0 = 22 / (44 + 44 - 22) = 1/3. Class 2: NaN.
    inter, union = boundary_iou_counts(PRED_SHIFT, GT_SQ, 3)
    np.testing.assert_array_equal(inter, [22, 18, 0])
    np.testing.assert_array_equal(union, [66, 54, 0])
    biou = boundary_iou(PRED_SHIFT, GT_SQ, 3)
    np.testing.assert_allclose(biou[:2], [1 / 3, 1 / 3])
    assert math.isnan(biou[2])


def test_boundary_iou_wider_band():
    # dilation_ratio 0.05 -> d = 2. Class 1: band = 100 - 6*6 = 64 pixels per square.
    # gt band: rows {5,6,13,14} x cols 5..14, plus cols {5,6,13,14} on rows 7..12.
    # pred band: rows {5,6,13,14} x cols 6..15, plus cols {6,7,14,15} on rows 7..12.
    # shared: 4 rows x cols 6..14 = 36, plus cols {6, 14} on 6 rows = 12 -> 48.
    # BIoU_1 = 48 / (64 + 64 - 48) = 48 / 80 = 0.6.
    inter, union = boundary_iou_counts(PRED_SHIFT, GT_SQ, 2, dilation_ratio=0.05)
    assert (inter[1], union[1]) == (48, 80)
    assert boundary_iou(PRED_SHIFT, GT_SQ, 2, dilation_ratio=0.05)[1] == pytest.approx(0.6)


def test_boundary_iou_image_border_as_contour():
    # Reference behaviour: the image border is a contour. Class 1 does not touch the border
    # (same 18/54). Class 0 gains the 1-pixel frame of the 32x32 image, 4*32 - 4 = 124 pixels,
    # in both bands: (22 + 124) / (66 + 124) = 146 / 190.
    inter, union = boundary_iou_counts(PRED_SHIFT, GT_SQ, 2, border_as_contour=True)
    np.testing.assert_array_equal(inter, [146, 18])
    np.testing.assert_array_equal(union, [190, 54])


def test_boundary_iou_perfect_absent_and_gt_only_classes():
    gt = GT_SQ.copy()
    gt[20:23, 20:23] = 2                            # class 2: a 3x3 square, gt only
    pred = GT_SQ.copy()                             # perfect for classes 0 and 1, misses class 2
    # class 2's band is its whole 3x3 square (9 px, d = 1), pred has no class 2: 0 / 9 = 0.
    # class 3 is in neither map: NaN.
    biou = boundary_iou(pred, gt, 4)
    assert biou[1] == 1.0
    assert biou[2] == 0.0
    assert math.isnan(biou[3])
    # background band changes (it now also borders the 3x3 square) but is not perfect either:
    # 0 < BIoU_0 < 1
    assert 0.0 < biou[0] < 1.0
    perfect = boundary_iou(gt, gt, 4)
    np.testing.assert_array_equal(perfect[:3], [1.0, 1.0, 1.0])
    assert math.isnan(perfect[3])


def test_boundary_iou_ignore_pixels_are_excluded():
    # gt ignores a 6x6 block (rows 20..25, cols 20..25) where the prediction says class 1.
    # Counting that block would add a 20-pixel ring of class 1 to the pred band (and an 8-adjacent
    # ring to class 0), so a prediction perfect on valid pixels would score < 1. Excluded: 1.0.
    gt = GT_SQ.copy()
    gt[20:26, 20:26] = IGN
    pred = GT_SQ.copy()
    pred[20:26, 20:26] = 1
    np.testing.assert_array_equal(boundary_iou(pred, gt, 2), [1.0, 1.0])
    # anything predicted at ignored pixels gives the same counts
    rng = np.random.default_rng(0)
    pred2 = pred.copy()
    pred2[20:26, 20:26] = rng.integers(0, 2, size=(6, 6))
    for a, b in zip(boundary_iou_counts(pred, gt, 2), boundary_iou_counts(pred2, gt, 2)):
        np.testing.assert_array_equal(a, b)


def test_boundary_iou_ignore_is_unknown_not_a_contour():
    # Shifted square, and gt ignores cols 15..16 (all rows). Ignored pixels neither count nor
    # make a contour. d = 1.
    # gt class-1 band: rows 5 and 14 on cols 5..14 (20) + col 5 on rows 6..13 (8) = 28; col 14
    #   rows 6..13 only touch class 1 and ignored pixels -> not in the band.
    # pred class-1 band (valid part cols 6..14): rows 5 and 14 on cols 6..14 (18) + col 6 on
    #   rows 6..13 (8) = 26; col 14 rows 6..13 only touch class 1 and ignored pixels.
    # shared: rows 5, 14 on cols 6..14 = 18. BIoU_1 = 18 / (28 + 26 - 18) = 18 / 36 = 0.5.
    gt = GT_SQ.copy()
    gt[:, 15:17] = IGN
    inter, union = boundary_iou_counts(PRED_SHIFT, gt, 2)
    assert (inter[1], union[1]) == (18, 36)
    assert boundary_iou(PRED_SHIFT, gt, 2)[1] == 0.5


def _reference_boundary_iou(pred, gt, num_classes, d, border_as_contour):
    """Per-class Boundary IoU the way the reference code does it: pad the mask with a 1-pixel
    border (zeros: the image border is a contour; ones: it is not), erode d times with a 3x3
    square, band = mask minus erosion. Ignored pixels are treated as inside every mask."""
    valid = gt != IGN
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for c in range(num_classes):
        bands = []
        for labels in (gt, pred):
            mask = valid & (labels == c)
            padded = np.pad(mask | ~valid, 1, constant_values=not border_as_contour)
            eroded = ndimage.binary_erosion(padded, np.ones((3, 3), bool), iterations=d,
                                            border_value=1)[1:-1, 1:-1]
            bands.append(mask & ~eroded)
        inter[c] = np.sum(bands[0] & bands[1])
        union[c] = np.sum(bands[0] | bands[1])
    return inter, union


@pytest.mark.parametrize("border_as_contour", [False, True])
@pytest.mark.parametrize("ignore_frac", [0.0, 0.15])
def test_boundary_iou_matches_iterated_erosion_reference(border_as_contour, ignore_frac):
    for seed, shape in enumerate([(40, 57), (64, 64), (23, 31)]):
        gt = _blobs(shape, 4, seed, ignore_frac)
        pred = _blobs(shape, 4, seed + 100)
        pred[np.random.default_rng(seed).random(shape) < 0.05] = 3  # speckle noise
        for ratio in (0.02, 0.05, 0.1):
            d = boundary_width(shape, ratio)
            got = boundary_iou_counts(pred, gt, 4, ratio, IGN, border_as_contour)
            want = _reference_boundary_iou(pred, gt, 4, d, border_as_contour)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_boundary_iou_accepts_torch_and_validates_inputs():
    np.testing.assert_array_equal(
        boundary_iou(torch.from_numpy(PRED_SHIFT), torch.from_numpy(GT_SQ).to(torch.uint8), 2),
        boundary_iou(PRED_SHIFT, GT_SQ, 2))
    with pytest.raises(ValueError, match="shape"):
        boundary_iou(PRED_SHIFT[:-1], GT_SQ, 2)
    with pytest.raises(ValueError, match="outside"):
        boundary_iou(PRED_SHIFT, GT_SQ * 7, 2)       # gt label 7 with num_classes 2
    with pytest.raises(TypeError):
        boundary_iou(PRED_SHIFT.astype(float), GT_SQ, 2)
    with pytest.raises(ValueError, match="2-D"):
        boundary_iou(PRED_SHIFT[None], GT_SQ[None], 2)


# ----------------------------------------------------------------------------- trimap IoU

# 8x8, gt: cols 0..3 class 0, cols 4..7 class 1; pred: the boundary one column to the right
# (cols 0..4 class 0, cols 5..7 class 1).
GT_HALF = square((8, 8), (0, 7), (4, 7))
PRED_HALF = square((8, 8), (0, 7), (5, 7))


def test_trimap_band_width():
    # width w: pixels within chessboard distance w of a pixel with another label;
    # the image border is not a boundary.
    band1 = trimap_band(GT_HALF, 1)
    assert band1[:, 3:5].all() and band1.sum() == 16           # cols 3, 4
    band2 = trimap_band(GT_HALF, 2)
    assert band2[:, 2:6].all() and band2.sum() == 32           # cols 2..5
    assert not trimap_band(np.zeros((8, 8), int), 3).any()     # no boundary at all


def test_trimap_iou_hand_computed():
    # w = 1, band = cols 3, 4 (16 px). gt: col 3 = 0, col 4 = 1; pred: cols 3, 4 = 0.
    #   class 0: inter = col 3 (8), union = cols 3, 4 (16) -> 0.5
    #   class 1: inter 0, union = col 4 (8) -> 0
    # w = 2, band = cols 2..5. gt 0 on cols 2, 3; pred 0 on cols 2..4; gt 1 on 4, 5; pred 1 on 5.
    #   class 0: 16 / 24 = 2/3;  class 1: 8 / 16 = 0.5
    # (whole-image IoU of class 0 would be 32 / 40 = 0.8)
    inter, union = trimap_iou_counts(PRED_HALF, GT_HALF, 3, 1)
    np.testing.assert_array_equal(inter, [8, 0, 0])
    np.testing.assert_array_equal(union, [16, 8, 0])
    t1 = trimap_iou(PRED_HALF, GT_HALF, 3, 1)
    np.testing.assert_allclose(t1[:2], [0.5, 0.0])
    assert math.isnan(t1[2])                                   # class 2 absent from both
    np.testing.assert_allclose(trimap_iou(PRED_HALF, GT_HALF, 2, 2), [2 / 3, 0.5])
    np.testing.assert_array_equal(trimap_iou(GT_HALF, GT_HALF, 2, 3), [1.0, 1.0])


def test_trimap_iou_ignore_pixels():
    # gt col 4 rows 0..3 ignored. Ignored pixels are not labels and are never counted. w = 1.
    # Band: col 3 rows 0..2 only touch class 0 and ignored pixels -> out; (3, 3) touches (4, 4)
    # = class 1 diagonally -> in; col 3 rows 4..7 -> in (5 px in col 3). Col 4 rows 4..7 are
    # class 1 next to class 0 -> in (4 px). Col 5 rows 0..3 touch only ignored and class 1
    # -> out. Band = 9 px; pred is 0 on all of them.
    #   class 0: inter 5, union 5 + 4 = 9 -> 5/9;   class 1: inter 0, union 4 -> 0
    gt = GT_HALF.copy()
    gt[0:4, 4] = IGN
    band = trimap_band(gt, 1)
    expected_band = np.zeros((8, 8), bool)
    expected_band[3:8, 3] = True
    expected_band[4:8, 4] = True
    np.testing.assert_array_equal(band, expected_band)
    inter, union = trimap_iou_counts(PRED_HALF, gt, 2, 1)
    np.testing.assert_array_equal(inter, [5, 0])
    np.testing.assert_array_equal(union, [9, 4])


def _reference_trimap(gt, w):
    """Band by brute force: compare every pixel with every shifted copy within the window."""
    h, wd = gt.shape
    band = np.zeros(gt.shape, bool)
    for dy in range(-w, w + 1):
        for dx in range(-w, w + 1):
            ys, xs = np.mgrid[0:h, 0:wd]
            qy, qx = ys + dy, xs + dx
            inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < wd)
            q = np.full(gt.shape, IGN)
            q[inside] = gt[qy[inside], qx[inside]]
            band |= (gt != IGN) & (q != IGN) & (q != gt)
    return band


def test_trimap_matches_brute_force():
    for seed in range(3):
        gt = _blobs((30, 41), 5, seed, ignore_frac=0.1)
        pred = _blobs((30, 41), 5, seed + 7)
        for w in (1, 2, 4):
            band = _reference_trimap(gt, w)
            np.testing.assert_array_equal(trimap_band(gt, w), band)
            inter, union = trimap_iou_counts(pred, gt, 5, w)
            for c in range(5):
                assert inter[c] == np.sum(band & (gt == c) & (pred == c))
                assert union[c] == np.sum(band & ((gt == c) | (pred == c)))


def test_label_boundary_band_is_union_of_inner_bands():
    # the trimap of width w is the union over classes of the gt inner bands of Boundary IoU
    gt = _blobs((40, 40), 4, 3)
    d = boundary_width(gt.shape, 0.05)
    band = label_boundary_band(gt, d)
    inter, union = boundary_iou_counts(gt, gt, 4, 0.05)
    np.testing.assert_array_equal(union, [np.sum(band & (gt == c)) for c in range(4)])
    np.testing.assert_array_equal(band, trimap_band(gt, d))


# ----------------------------------------------------------------------------- connectivity

# 12x12: gt class 1 on the 8x8 square rows 2..9, cols 2..9, class 0 around it.
GT_BLOCK = square((12, 12), (2, 9), (2, 9))


def test_connectivity_region_split_by_wrong_class_line():
    # pred: same square, but col 5 (rows 2..9) predicted as class 2. Class 1 falls into two
    # pieces, cols 2..4 and cols 6..9 (two columns apart: not even diagonally connected).
    #   class 1: 1 gt region overlapped by 2 pieces -> fragmentation 1, pieces/region 2,
    #            component ratio 2 / 1 = 2, missed 0
    #   class 0: the background ring is one region and one piece -> 0, 1, 1, 0
    #   class 2: no gt region -> NaN everywhere (its pred component is still counted)
    pred = GT_BLOCK.copy()
    pred[2:10, 5] = 2
    counts = connectivity_counts(pred, GT_BLOCK, 3)
    np.testing.assert_array_equal(counts["gt_regions"], [1, 1, 0])
    np.testing.assert_array_equal(counts["pieces"], [1, 2, 0])
    np.testing.assert_array_equal(counts["fragmented"], [0, 1, 0])
    np.testing.assert_array_equal(counts["pred_components"], [1, 2, 1])
    m = region_connectivity(pred, GT_BLOCK, 3)
    np.testing.assert_array_equal(m["fragmentation"][:2], [0.0, 1.0])
    np.testing.assert_array_equal(m["pieces_per_region"][:2], [1.0, 2.0])
    np.testing.assert_array_equal(m["component_ratio"][:2], [1.0, 2.0])
    np.testing.assert_array_equal(m["missed"][:2], [0.0, 0.0])
    assert all(math.isnan(m[k][2]) for k in m)


def test_connectivity_perfect_and_missed_regions():
    gt = square((12, 20), (2, 5), (2, 5))
    gt[6:10, 12:16] = 1                                  # two separate class-1 regions
    perfect = region_connectivity(gt, gt, 2)
    for key, ideal in [("fragmentation", 0.0), ("missed", 0.0), ("pieces_per_region", 1.0),
                       ("component_ratio", 1.0)]:
        np.testing.assert_array_equal(perfect[key], [ideal, ideal])
    # pred finds only the first region: missed 1/2, not fragmented, pieces per detected
    # region 1 / 1, component ratio 1 pred component / 2 gt regions = 0.5
    pred = square((12, 20), (2, 5), (2, 5))
    m = region_connectivity(pred, gt, 2)
    assert m["missed"][1] == 0.5
    assert m["fragmentation"][1] == 0.0
    assert m["pieces_per_region"][1] == 1.0
    assert m["component_ratio"][1] == 0.5
    # a class in gt only, entirely missed: missed 1, fragmentation 0, pieces/region NaN
    m = region_connectivity(np.zeros_like(gt), gt, 2)
    assert (m["missed"][1], m["fragmentation"][1], m["component_ratio"][1]) == (1.0, 0.0, 0.0)
    assert math.isnan(m["pieces_per_region"][1])


def test_connectivity_parameter_and_min_area():
    # two 2x2 blocks of class 1 touching only at a corner: one region with 8-connectivity,
    # two with 4-connectivity. pred = the first block only.
    gt = np.zeros((6, 6), np.int64)
    gt[0:2, 0:2] = 1
    gt[2:4, 2:4] = 1
    pred = np.zeros_like(gt)
    pred[0:2, 0:2] = 1
    c8 = connectivity_counts(pred, gt, 2, connectivity=8)
    c4 = connectivity_counts(pred, gt, 2, connectivity=4)
    assert (c8["gt_regions"][1], c8["missed"][1]) == (1, 0)   # one region, detected
    assert (c4["gt_regions"][1], c4["missed"][1]) == (2, 1)   # second block missed
    with pytest.raises(ValueError):
        connectivity_counts(pred, gt, 2, connectivity=6)
    # min_area: a 1-pixel gt region and a 1-pixel pred speck are dropped with min_area=2
    gt2 = GT_BLOCK.copy()
    gt2[0, 11] = 1                                           # isolated 1-pixel gt region
    pred2 = GT_BLOCK.copy()
    pred2[11, 0] = 1                                         # isolated 1-pixel pred speck
    pred2[5, 5] = 0                                          # a hole: still one piece
    c0 = connectivity_counts(pred2, gt2, 2)
    assert (c0["gt_regions"][1], c0["missed"][1], c0["pred_components"][1]) == (2, 1, 2)
    c2 = connectivity_counts(pred2, gt2, 2, min_area=2)
    assert (c2["gt_regions"][1], c2["missed"][1], c2["pred_components"][1]) == (1, 0, 1)


def test_connectivity_pred_piece_inside_region_counts_and_ignore_excluded():
    # pred: the block with a ring of class 0 (rows/cols 3..8 border) cutting out an inner 4x4
    # island rows 4..7, cols 4..7: two class-1 pieces (outer ring and island) overlap the one
    # gt region -> fragmented. Also a class-1 blob predicted inside an ignored gt area does not
    # count as a predicted component.
    pred = GT_BLOCK.copy()
    pred[3:9, 3:9] = 0
    pred[4:8, 4:8] = 1
    gt = GT_BLOCK.copy()
    gt[0, 0:3] = IGN                                         # not adjacent to the block
    pred[0, 0:3] = 1
    c = connectivity_counts(pred, gt, 2)
    assert (c["gt_regions"][1], c["pieces"][1], c["fragmented"][1]) == (1, 2, 1)
    assert c["pred_components"][1] == 2


def _reference_connectivity(pred, gt, num_classes, connectivity, min_area):
    """Region by region with Python sets, on the full image."""
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    valid = gt != IGN
    out = {k: np.zeros(num_classes, int) for k in
           ("gt_regions", "missed", "fragmented", "pieces", "pred_components")}
    for c in range(num_classes):
        g_lab, n_g = ndimage.label(valid & (gt == c), structure)
        p_lab, n_p = ndimage.label(valid & (pred == c), structure)
        big_p = {j for j in range(1, n_p + 1) if np.sum(p_lab == j) >= min_area}
        out["pred_components"][c] = len(big_p)
        for i in range(1, n_g + 1):
            region = g_lab == i
            if region.sum() < min_area:
                continue
            k = len(set(np.unique(p_lab[region]).tolist()) & big_p)
            out["gt_regions"][c] += 1
            out["missed"][c] += k == 0
            out["fragmented"][c] += k > 1
            out["pieces"][c] += k
    return out


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("min_area", [0, 5])
def test_connectivity_matches_region_by_region_reference(connectivity, min_area):
    for seed in range(3):
        gt = _blobs((37, 45), 4, seed, ignore_frac=0.1)
        pred = _blobs((37, 45), 4, seed + 50)
        pred[np.random.default_rng(seed).random(gt.shape) < 0.1] = 2   # speckles split regions
        got = connectivity_counts(pred, gt, 4, connectivity, min_area)
        want = _reference_connectivity(pred, gt, 4, connectivity, min_area)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# ----------------------------------------------------------------------------- accumulation


def test_accumulator_sums_counts_over_images():
    # image A: the shifted 10x10 square (class 1 BIoU counts 18 / 54, class 0 22 / 66).
    # image B: a perfectly predicted 4x4 square rows 20..23, cols 20..23 (d = 1): class 1 band
    #   16 - 2*2 = 12 px, inter = union = 12; class 0 band = the 6x6 - 4x4 = 20 ring, 20 / 20.
    # dataset: class 1 (18 + 12) / (54 + 12) = 30/66 = 5/11 = 0.4545 (mean of per-image values
    #   would be (1/3 + 1) / 2 = 0.667); class 0 (22 + 20) / (66 + 20) = 42/86.
    gt_b = square((32, 32), (20, 23), (20, 23))
    acc = SegmentationQualityAccumulator(3, trimap_widths=(1, 2))
    acc.update(PRED_SHIFT, GT_SQ)
    acc.update(torch.from_numpy(gt_b), torch.from_numpy(gt_b))
    out = acc.compute()
    assert out["num_images"] == 2
    assert out["boundary_iou"][1] == pytest.approx(30 / 66)
    assert out["boundary_iou"][0] == pytest.approx(42 / 86)
    assert math.isnan(out["boundary_iou"][2])
    assert out["mBoundaryIoU"] == pytest.approx((30 / 66 + 42 / 86) / 2)   # NaN class skipped
    # the same from summed counts of the per-image functions
    for w in (1, 2):
        ia, ua = trimap_iou_counts(PRED_SHIFT, GT_SQ, 3, w)
        ib, ub = trimap_iou_counts(gt_b, gt_b, 3, w)
        want = (ia + ib)[:2] / (ua + ub)[:2]
        np.testing.assert_allclose(out[f"trimap_iou@{w}"][:2], want)
        assert out[f"mTrimapIoU@{w}"] == pytest.approx(want.mean())
    # trimap w=1 on image A by hand: band = rows 4..15 x cols 4..15 minus rows 6..13 x cols
    # 6..13 (the 36-px inner ring of the gt square plus the 44-px ring around it, 144 - 64).
    # gt 1 in band: the inner ring = rows 5, 14 on cols 5..14 + cols 5, 14 on rows 6..13 (36).
    # pred 1 in band: the pred square minus rows 6..13 x cols 6..13 = rows 5, 14 on cols 6..15
    # + cols 14, 15 on rows 6..13 (36). inter = rows 5, 14 on cols 6..14 (18) + col 14 on rows
    # 6..13 (8) = 26; union = 36 + 36 - 26 = 46.
    ia, ua = trimap_iou_counts(PRED_SHIFT, GT_SQ, 3, 1)
    assert (ia[1], ua[1]) == (26, 46)


def test_accumulator_connectivity_sums_not_means():
    # image A: one region split in two pieces; image B: two regions, one piece each.
    # summed: 3 regions, 1 fragmented -> 1/3 (mean of per-image values: (1 + 0) / 2 = 0.5);
    # pieces/region (2 + 2) / 3 = 4/3 (not 1.5); component ratio (2 + 2) / (1 + 2) = 4/3.
    pred_a = GT_BLOCK.copy()
    pred_a[2:10, 5] = 0
    gt_b = square((12, 12), (1, 3), (1, 3))
    gt_b[7:10, 7:10] = 1
    acc = SegmentationQualityAccumulator(2, trimap_widths=(1,), min_area=0)
    acc.update(np.stack([pred_a, gt_b]), np.stack([GT_BLOCK, gt_b]))        # a batch of 2
    out = acc.compute()
    assert out["fragmentation"][1] == pytest.approx(1 / 3)
    assert out["pieces_per_region"][1] == pytest.approx(4 / 3)
    assert out["component_ratio"][1] == pytest.approx(4 / 3)
    assert out["missed"][1] == 0.0
    # merge == updating one accumulator with everything
    a1 = SegmentationQualityAccumulator(2, trimap_widths=(1,))
    a2 = SegmentationQualityAccumulator(2, trimap_widths=(1,))
    a1.update(pred_a, GT_BLOCK)
    a2.update(gt_b, gt_b)
    a1.merge(a2)
    merged = a1.compute()
    for key, value in out.items():
        np.testing.assert_equal(merged[key], value)
    acc.reset()
    assert acc.compute()["num_images"] == 0
    assert math.isnan(acc.compute()["mBoundaryIoU"])


def test_accumulator_output_keys_and_types():
    acc = SegmentationQualityAccumulator(3)
    acc.update(PRED_SHIFT, GT_SQ)
    out = acc.compute()
    expected = {"num_images", "boundary_iou", "mBoundaryIoU", "fragmentation", "mFragmentation",
                "missed", "mMissed", "pieces_per_region", "mPiecesPerRegion", "component_ratio",
                "mComponentRatio"}
    for w in (1, 3, 5):
        expected |= {f"trimap_iou@{w}", f"mTrimapIoU@{w}"}
    assert set(out) == expected
    for key, value in out.items():
        if key.startswith("m") and key != "missed":
            assert isinstance(value, float)
        elif key != "num_images":
            assert isinstance(value, list) and len(value) == 3
            assert all(isinstance(v, float) for v in value)
