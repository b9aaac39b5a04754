from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toolchain.core.spec import SPECS
from zoo.search import MAX_LEN, VOCAB, TextEncoder, TwoTower


def _build(name: str) -> torch.nn.Module:
    return SPECS.get(name).build().eval()


def _batch(batch: int, length: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids and a padding mask whose rows keep prefixes of lengths 1..length."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch, length), generator=gen)
    keep = torch.linspace(1, length, batch).round().long().unsqueeze(1)
    mask = torch.arange(length).unsqueeze(0) < keep
    return tokens, mask


def _repad(tokens: torch.Tensor, mask: torch.Tensor, *, seed: int) -> torch.Tensor:
    """`tokens` with every padded position (mask False) replaced by other random ids."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, VOCAB, tokens.shape, generator=gen)
    changed = torch.where(mask, tokens, noise)
    assert not torch.equal(changed, tokens)
    return changed


def test_zoo_search_registers_both_models() -> None:
    assert SPECS.get("search.text_encoder").factory is TextEncoder
    assert SPECS.get("search.two_tower").factory is TwoTower


def test_build_is_seeded() -> None:
    first, second = _build("search.text_encoder"), _build("search.text_encoder")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_text_encoder_embedding_shape_and_finite() -> None:
    model = _build("search.text_encoder")
    tokens, mask = _batch(5, 16, seed=0)
    with torch.no_grad():
        out = model(tokens, mask)
    assert out.shape == (5, 64)
    assert torch.isfinite(out).all()


def test_text_encoder_ignores_ids_at_padded_positions() -> None:
    model = _build("search.text_encoder")
    tokens, mask = _batch(6, 16, seed=1)
    with torch.no_grad():
        before = model(tokens, mask)
        after = model(_repad(tokens, mask, seed=2), mask)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_text_encoder_ignores_extra_trailing_padding() -> None:
    model = _build("search.text_encoder")
    tokens, mask = _batch(4, 10, seed=3)
    longer = torch.cat([tokens, torch.randint(0, VOCAB, (4, 7), generator=torch.Generator().manual_seed(4))], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(4, 7, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(longer, longer_mask), model(tokens, mask), rtol=1e-5, atol=1e-5)


def test_text_encoder_depends_on_real_tokens() -> None:
    model = _build("search.text_encoder")
    tokens, mask = _batch(4, 12, seed=5)
    changed = tokens.clone()
    changed[:, 0] = (tokens[:, 0] + 1) % VOCAB  # the first position is real in every row
    with torch.no_grad():
        diff = (model(changed, mask) - model(tokens, mask)).abs().amax(dim=1)
    assert (diff > 1e-3).all(), diff


def test_text_encoder_accepts_the_longest_declared_sequence() -> None:
    model = _build("search.text_encoder")
    tokens, mask = _batch(2, MAX_LEN, seed=6)
    with torch.no_grad():
        assert torch.isfinite(model(tokens, mask)).all()


def _two_tower_inputs(seed: int) -> tuple[torch.Tensor, ...]:
    query, query_mask = _batch(5, 8, seed=seed)
    doc, doc_mask = _batch(5, 24, seed=seed + 1)
    return query, query_mask, doc, doc_mask


def test_two_tower_score_is_the_cosine_of_the_towers() -> None:
    model = _build("search.two_tower")
    assert isinstance(model, TwoTower)
    query, query_mask, doc, doc_mask = _two_tower_inputs(10)
    with torch.no_grad():
        score = model(query, query_mask, doc, doc_mask)
        q = model.query_tower(query, query_mask)
        d = model.doc_tower(doc, doc_mask)
    assert score.shape == (5,)
    torch.testing.assert_close(score, F.cosine_similarity(q, d, dim=-1), rtol=1e-5, atol=1e-6)
    assert (score.abs() <= 1 + 1e-6).all()
    assert score.std() > 1e-3  # not a constant


def test_two_tower_query_tower_is_a_masked_mean() -> None:
    model = _build("search.two_tower")
    assert isinstance(model, TwoTower)
    query, query_mask = _batch(4, 8, seed=11)
    tower = model.query_tower
    weights = query_mask.float() / query_mask.sum(1, keepdim=True)
    expected = tower.mlp((tower.bag.weight[query] * weights.unsqueeze(-1)).sum(1))
    with torch.no_grad():
        torch.testing.assert_close(tower(query, query_mask), expected, rtol=1e-5, atol=1e-6)


def test_two_tower_rows_are_scored_independently() -> None:
    model = _build("search.two_tower")
    inputs = _two_tower_inputs(12)
    order = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        score = model(*inputs)
        shuffled = model(*(x[order] for x in inputs))
    torch.testing.assert_close(shuffled, score[order], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", ["query", "doc"])
def test_two_tower_ignores_ids_at_padded_positions(side: str) -> None:
    model = _build("search.two_tower")
    query, query_mask, doc, doc_mask = _two_tower_inputs(13)
    if side == "query":
        changed = (_repad(query, query_mask, seed=99), query_mask, doc, doc_mask)
    else:
        changed = (query, query_mask, _repad(doc, doc_mask, seed=99), doc_mask)
    with torch.no_grad():
        torch.testing.assert_close(model(*changed), model(query, query_mask, doc, doc_mask), rtol=0, atol=1e-6)
