"""Batched decoding, batch/prompt layouts and the grid (automatic) mode."""
import pytest
import torch

from desam_nnu.model import build_desam, make_point_grid

S = 128  # tiny backbone at 128 px: neck 8x8, masks 32x32
ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_desam("tiny", image_size=S).eval()
    # make the IoU head spread its outputs so that thresholds are meaningful with random weights
    with torch.no_grad():
        m.prim.iou_prediction_head.layers[-1].weight.mul_(20)
        m.prim.iou_prediction_head.layers[-1].bias.add_(2.5)  # IoUs around 0.3..0.9 for these inputs
    return m


@pytest.fixture(scope="module")
def feats(model):
    torch.manual_seed(1)
    with torch.no_grad():
        return model.encode(torch.rand(2, 3, S, S) * 255)


def one(feats, i):
    return [f[i : i + 1] for f in feats]


def loop_decode(model, feats, coords, labels=None, boxes=None):
    outs = []
    for p in range(coords.shape[0] if coords is not None else boxes.shape[0]):
        pts = None if coords is None else (coords[p : p + 1], labels[p : p + 1])
        box = None if boxes is None else boxes[p : p + 1]
        outs.append(model.decode(feats, points=pts, boxes=box))
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


@torch.no_grad()
def test_batched_points_equal_per_prompt(model, feats):
    torch.manual_seed(2)
    coords = torch.rand(6, 2, 2) * S
    labels = torch.tensor([[1, 0], [1, 1], [1, -1], [0, 1], [1, 0], [1, -1]])
    img = one(feats, 0)
    logits, iou = model.decode(img, points=(coords, labels))
    ref_logits, ref_iou = loop_decode(model, img, coords, labels)
    assert logits.shape == (6, 1, 32, 32) and iou.shape == (6, 1)
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(iou, ref_iou, atol=ATOL, rtol=0)


@torch.no_grad()
def test_batched_boxes_and_points_with_boxes(model, feats):
    boxes = torch.tensor([[0.0, 0.0, S, S], [10.0, 20.0, 60.0, 90.0], [50.0, 50.0, 120.0, 100.0]])
    coords = torch.tensor([[[30.0, 40.0]], [[30.0, 60.0]], [[80.0, 70.0]]])
    labels = torch.ones(3, 1)
    img = one(feats, 1)
    for pts in (None, (coords, labels)):
        logits, iou = model.decode(img, points=pts, boxes=boxes)
        ref = loop_decode(model, img, None if pts is None else coords, labels, boxes)
        torch.testing.assert_close(logits, ref[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(iou, ref[1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_point_formats(model, feats):
    img = one(feats, 0)
    coords = torch.tensor([[20.0, 30.0], [100.0, 50.0]])
    a = model.decode(img, points=coords)  # bare [P, 2]: one positive point per prompt
    b = model.decode(img, points=(coords[:, None], torch.ones(2, 1, dtype=torch.int64)))
    c = model.decode(img, points=(coords, torch.ones(2)))
    for x in (b, c):
        torch.testing.assert_close(a[0], x[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="needs a prompt"):
        model.decode(img)
    with pytest.raises(ValueError, match="do not match"):
        model.decode(img, points=(coords[:, None], torch.ones(3, 1)))


@torch.no_grad()
def test_training_layout_and_image_index(model, feats):
    coords = torch.tensor([[[20.0, 30.0]], [[100.0, 50.0]], [[60.0, 60.0]]])
    labels = torch.ones(3, 1)
    # B images paired with B prompts
    logits, iou = model.decode(feats, points=(coords[:2], labels[:2]))
    for i in range(2):
        ref = model.decode(one(feats, i), points=(coords[i : i + 1], labels[i : i + 1]))
        torch.testing.assert_close(logits[i : i + 1], ref[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(iou[i : i + 1], ref[1], atol=ATOL, rtol=0)
    # general mapping prompt -> image
    index = torch.tensor([1, 0, 1])
    logits, iou = model.decode(feats, points=(coords, labels), image_index=index)
    for p, i in enumerate(index.tolist()):
        ref = model.decode(one(feats, i), points=(coords[p : p + 1], labels[p : p + 1]))
        torch.testing.assert_close(logits[p : p + 1], ref[0], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="image_index"):
        model.decode(feats, points=(coords, labels))  # 2 images, 3 prompts, no mapping


@torch.no_grad()
def test_context_branches_run_once_per_image(model, feats):
    seen = []
    hooks = [blk.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0])) for blk in model.pdmm.conv_blocks_context]
    fused = []
    hooks.append(model.pdmm.mask_embedding_fusion.register_forward_hook(lambda m, i, o: fused.append(o.shape[0])))
    try:
        model.decode(one(feats, 0), points=make_point_grid(4, S))
    finally:
        for h in hooks:
            h.remove()
    assert seen == [1, 1, 1] and fused == [16]


@torch.no_grad()
def test_grid_top1_equals_best_single_prompt(model, feats):
    img = one(feats, 0)
    grid = make_point_grid(5, S)
    _, iou = model.decode(img, points=grid)
    thresh = float(iou.median())
    res = model.decode_grid(img, grid, iou_thresh=thresh, top_k=1)
    best = int(iou[:, 0].argmax())
    assert not res.empty and res.indices.tolist() == [[best]] and res.kept.tolist() == [[True]]
    ref_logits, ref_iou = model.decode(img, points=grid[best : best + 1])
    torch.testing.assert_close(res.mask_logits, ref_logits[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(res.probabilities, torch.sigmoid(ref_logits[0]), atol=ATOL, rtol=0)
    torch.testing.assert_close(res.iou[0], ref_iou[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(res.prompt_iou, iou, atol=ATOL, rtol=0)


@torch.no_grad()
def test_grid_threshold_topk_and_fusion(model, feats):
    img = one(feats, 0)
    grid = make_point_grid(5, S)
    logits, iou = model.decode(img, points=grid)
    iou = iou[:, 0]
    order = torch.argsort(iou, descending=True)
    # exactly three prompts are above it, with a margin that chunked PRIM's rounding cannot cross
    thresh = float(iou[order[2]] + iou[order[3]]) / 2
    fused = []
    hook = model.pdmm.mask_embedding_fusion.register_forward_hook(lambda m, i, o: fused.append(o.shape[0]))
    try:
        res = model.decode_grid(img, grid, iou_thresh=thresh, top_k=5)
    finally:
        hook.remove()
    assert fused == [3]  # PDMM's per-prompt path ran for the kept prompts only
    assert res.kept[:, 0].tolist() == [True, True, True, False, False]
    assert res.indices[:, 0].tolist() == order[:3].tolist() + [-1, -1]
    w = iou[order[:3]]
    assert torch.all(w > 0)
    expected = (w[:, None, None] * torch.sigmoid(logits[order[:3], 0])).sum(0) / w.sum()
    torch.testing.assert_close(res.probabilities[0], expected, atol=ATOL, rtol=0)
    assert torch.all((res.mask_logits[0] > 0) == (res.probabilities[0] > 0.5))
    # top_k limits how many of the passing prompts are fused
    res2 = model.decode_grid(img, grid, iou_thresh=thresh, top_k=2)
    assert res2.indices[:, 0].tolist() == order[:2].tolist()
    # PRIM in chunks of 4 prompts (bounded memory) gives the same result
    res3 = model.decode_grid(img, grid, iou_thresh=thresh, top_k=5, prompts_per_batch=4)
    assert torch.equal(res3.indices, res.indices)
    torch.testing.assert_close(res3.probabilities, res.probabilities, atol=ATOL, rtol=0)
    torch.testing.assert_close(res3.prompt_iou, res.prompt_iou, atol=ATOL, rtol=0)


@torch.no_grad()
def test_grid_empty(model, feats):
    img = one(feats, 0)
    grid = make_point_grid(3, S)
    _, iou = model.decode(img, points=grid)
    res = model.decode_grid(img, grid, iou_thresh=float(iou.max()) + 1.0, top_k=1)
    assert res.empty and not res.kept.any() and res.indices.tolist() == [[-1]]
    assert res.probabilities.shape == (1, 32, 32) and torch.all(res.probabilities == 0)
    assert torch.all(res.mask_logits < 0)
    with pytest.raises(ValueError, match="one image"):
        model.decode_grid(feats, grid)


@torch.no_grad()
def test_grid_multiclass_per_class_selection():
    torch.manual_seed(3)
    m = build_desam("tiny", image_size=64, num_classes=2).eval()
    img = m.encode(torch.rand(1, 3, 64, 64) * 255)
    grid = make_point_grid(3, 64)
    logits, iou = m.decode(img, points=grid)
    res = m.decode_grid(img, grid, iou_thresh=-1e9, top_k=1)
    for c in range(2):
        best = int(iou[:, c].argmax())
        assert int(res.indices[0, c]) == best
        torch.testing.assert_close(res.mask_logits[c], logits[best, c], atol=ATOL, rtol=0)


@pytest.mark.parametrize("bq, bk, n, m, path", [
    (5, 1, 7, 64, "_fused"),        # grid, first layer token -> image: shared image keys folded into query rows
    (1, 5, 256, 7, "_few_keys"),    # grid, first layer image -> token: shared image queries, few keys
    (5, 5, 256, 7, "_few_keys"),    # later layers image -> token
    (5, 5, 7, 256, "_few_queries"),  # later layers and final token -> image, training's paired batches
    (3, 3, 10, 12, "_fused"),       # none of these shapes
])
def test_prompt_attention_equals_sams(bq, bk, n, m, path, monkeypatch):
    """PRIM's attention is SAM's Attention with another forward: same outputs and gradients."""
    from segment_anything.modeling.transformer import Attention

    from desam_nnu.model.attention import PromptAttention, use_prompt_attention
    torch.manual_seed(0)
    sam = Attention(64, num_heads=4, downsample_rate=2)  # SAM's cross-attention layout: internal width 32
    ours = use_prompt_attention(Attention(64, num_heads=4, downsample_rate=2))
    assert isinstance(ours, PromptAttention)
    ours.load_state_dict(sam.state_dict())
    calls = []
    original = getattr(PromptAttention, path)
    monkeypatch.setattr(PromptAttention, path, lambda self, *a: calls.append(path) or original(self, *a))
    q, k, v = (torch.randn(b, length, 64, requires_grad=True) for b, length in ((bq, n), (bk, m), (bk, m)))
    ref, out = sam(q, k, v), ours(q, k, v)
    assert calls == [path]
    assert out.shape == ref.shape == (max(bq, bk), n, 64)
    assert torch.allclose(out, ref, atol=1e-5)
    params = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "v_proj.bias", "out_proj.weight")
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v, *(sam.get_parameter(p) for p in params)))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v, *(ours.get_parameter(p) for p in params)))
    for g, r in zip(grads, grads_ref):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4)


def test_prim_uses_prompt_attention():
    from desam_nnu.model.attention import PromptAttention
    attn = [m for m in build_desam("tiny", image_size=S).prim.transformer.modules() if hasattr(m, "q_proj")]
    assert attn and all(isinstance(m, PromptAttention) for m in attn)
