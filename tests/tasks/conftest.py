"""Shared fixtures: the real tokenizers the tasks must work with (built once per session)."""

import pytest

from circuits.tasks import default_gpt2_tokenizer, task_vocabulary, word_level_tokenizer


@pytest.fixture(scope="session")
def gpt2_tok():
    return default_gpt2_tokenizer()


@pytest.fixture(scope="session")
def word_tok():
    return word_level_tokenizer(task_vocabulary())


@pytest.fixture(scope="session", params=["gpt2", "word"])
def any_tok(request, gpt2_tok, word_tok):
    return gpt2_tok if request.param == "gpt2" else word_tok
