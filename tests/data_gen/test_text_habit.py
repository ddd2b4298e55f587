"""Text habits: languages and pasted documents as marginals every family shares, rewritten as a
pure function of the text so that repeats and histories keep their shape."""

from __future__ import annotations

import dataclasses
import random

import pytest

from moat.data_gen.actors import ParamHabit
from moat.data_gen.text_habit import LANGUAGES, TextHabit

TEXTS = ["Write a retry decorator in Python.", "ok", "Explain the second step again.", ""]


def nonascii(text: str) -> float:
    return sum(ord(c) > 127 for c in text) / max(len(text), 1)


@pytest.mark.parametrize("text", TEXTS)
def test_a_plain_habit_leaves_text_alone(text: str) -> None:
    assert TextHabit().rewrite(text) == text


@pytest.mark.parametrize(
    "habit",
    [TextHabit("ru", 1.0), TextHabit("es", 0.5), TextHabit(None, 0.0, 1.0, 2000), TextHabit("zh", 0.7, 0.5, 800), TextHabit(openers=("hey", "pls can you"), opener_p=0.6)],
    ids=["russian", "spanish-half", "always-pastes", "chinese-sometimes-pastes", "openers"],
)
@pytest.mark.parametrize("text", TEXTS[:3])
def test_rewriting_is_a_pure_function_of_the_text(habit: TextHabit, text: str) -> None:
    # A history re-sent on every request must keep its earlier turns exactly as first written.
    assert habit.rewrite(text) == habit.rewrite(text) == TextHabit(habit.language, habit.mix, habit.paste_p, habit.paste_chars, habit.openers, habit.opener_p).rewrite(text)


@pytest.mark.parametrize(
    ("language", "low"),
    [("ru", 0.5), ("zh", 0.5), ("ja", 0.5), ("ar", 0.5), ("hi", 0.5), ("es", 0.0)],
)
def test_a_language_puts_its_script_into_the_text(language: str, low: float) -> None:
    text = "How do I write a function that parses dates in Python and why does it fail?"
    out = TextHabit(language, 1.0).rewrite(text)
    assert out != text
    assert nonascii(out) > low
    # Word by word: the same English word always becomes the same foreign word.
    assert out.split(" ")[3] == TextHabit(language, 1.0).rewrite("x y z " + text.split(" ")[3]).split(" ")[3]


def test_a_paste_puts_a_long_document_after_the_request() -> None:
    habit = TextHabit(None, 0.0, 1.0, 3000)
    out = habit.rewrite("Summarise this.")
    assert out.startswith("Summarise this.\n\n")
    assert 3000 * 0.2 < len(out) < 3000 * 6


def test_replies_are_translated_but_never_pasted() -> None:
    habit = TextHabit("de", 1.0, 1.0, 3000)
    reply = "Sure. Here is the answer you asked for."
    assert habit.rewrite_reply(reply) == habit._translate(reply)
    assert len(habit.rewrite_reply(reply)) < 200


def test_habits_are_drawn_as_a_minority_of_actors_in_every_language() -> None:
    habits = [TextHabit.draw(random.Random(i)) for i in range(4000)]
    languages = [h.language for h in habits if h.language]
    assert 0.12 < len(languages) / len(habits) < 0.25
    assert set(languages) == set(LANGUAGES)
    pasting = [h for h in habits if h.paste_p]
    assert 0.10 < len(pasting) / len(habits) < 0.20
    assert all(400 <= h.paste_chars <= 40_000 for h in pasting)


def test_most_clients_send_optional_fields_always_or_never() -> None:
    # Real clients are code: a field flips per request for a few of them only. A simulator where
    # most clients flip stream/seed/stop at random made parameter changes look normal.
    habits = [ParamHabit.draw(random.Random(i)) for i in range(4000)]
    flipping = [h for h in habits if any(0.0 < p < 1.0 for p in (h.stream_p, h.seed_p, h.stop_p, h.logprobs_p))]
    assert len(flipping) / len(habits) < 0.25


def test_an_opener_starts_a_share_of_the_requests_and_changes_their_shape() -> None:
    habit = TextHabit(openers=("quick q can you",), opener_p=0.5)
    prompts = [f"Write test number {i} for the parser." for i in range(400)]
    opened = [p for p in (habit.rewrite(p) for p in prompts) if p.startswith("quick q can you write test")]
    assert 0.35 < len(opened) / len(prompts) < 0.65


@pytest.mark.parametrize(("family", "one_writer"), [("sybil_cohort", True), ("sybil_campaign", True), ("shared_nat", False), ("corporate_nat", False)])
def test_a_script_writes_all_its_accounts_alike_and_people_write_their_own_way(family: str, one_writer: bool) -> None:
    from moat.data_gen.actors import SimContext
    from moat.data_gen.registry import registry
    from moat.data_gen.text import PromptGrammar

    actor = registry()[family]("t1", 7, SimContext(start=0.0, end=86_400.0, grammar=PromptGrammar()))
    habits = {actor.text_habit(f"acct_{i}") for i in range(40)}
    assert (len(habits) == 1) is one_writer


@pytest.mark.parametrize("seed", range(40))
def test_a_script_opens_and_pastes_every_prompt_or_none(seed: int) -> None:
    # A script's near-duplicates must stay near-duplicates: code does one thing to every prompt.
    # Opened or pasted at random per text, a campaign's shared template split into many shapes.
    habit = dataclasses.replace(TextHabit.draw(random.Random(seed), script=True), language=None, mix=0.0)
    assert habit.opener_p in (0.0, 1.0) and habit.paste_p in (0.0, 1.0)
    assert len(habit.openers) <= 1
    prompts = [habit.rewrite(f"Write test number {i} for the parser.") for i in range(30)]
    assert len({p.split(" write test")[0] if habit.opener_p else p[:5] for p in prompts}) == 1
    assert {"\n\n" in p for p in prompts} == {bool(habit.paste_p)}


@pytest.mark.parametrize(("family", "scripted"), [("doc_pipeline", True), ("benchmark_runner", True), ("self_instruct", True), ("chat_user", False), ("app_backend", False), ("human_task_walk", False)])
def test_code_writes_consistently_and_people_and_mimics_do_not(family: str, scripted: bool) -> None:
    # The habits an actor actually writes with, over many actors: code opens and pastes every
    # prompt or none; people (and the attackers passing for them) sometimes.
    from moat.data_gen.actors import SimContext
    from moat.data_gen.registry import registry
    from moat.data_gen.text import PromptGrammar

    ctx = SimContext(start=0.0, end=86_400.0, grammar=PromptGrammar())
    habits = [registry()[family](f"t{i}", i, ctx).text_habit(f"acct_{i}") for i in range(200)]
    partial = [h for h in habits if 0.0 < h.opener_p < 1.0 or 0.0 < h.paste_p < 1.0]
    assert (not partial) is scripted
    assert any(h.opener_p for h in habits)


def test_pastes_share_words_not_whole_sentences() -> None:
    # Pastes built from a handful of fixed sentences made one writer's documents near-copies.
    habit = TextHabit(None, 0.0, 1.0, 3000)
    docs = [habit.rewrite(f"Summarise report {i}.").split("\n\n", 1)[1] for i in range(20)]
    sentences = [s for d in docs for s in d.split(". ")]
    assert len(set(sentences)) > 0.8 * len(sentences)
