"""A message cut into sentences, so that each is embedded on its own (``EncoderConfig(split="sentences")``).

Chat messages mix a request with a fact said in passing ("Can you suggest some bike routes? By
the way, my road bike has been running great since the tune-up."). One embedding of the whole
message is pulled towards its longest part; embedding each sentence alone and averaging the unit
vectors gives the passing fact its own weight. With the fusion weights chosen for it, it raised
turn nDCG@10 by +0.017 on LongMemEval-S's dev split and by +0.013 [-0.007, +0.034] held out
(BENCHMARKS.md).

A sentence ends at ``.``, ``!``, ``?`` or ``…`` (with any closing quotes or brackets) followed by
white space, or at a line break. A piece of fewer than ``MIN_WORDS`` words ("Thanks!", "Hi
Sam.", the "Dr." of "Dr. Lee") joins its neighbour: too little to embed alone, and it keeps an
abbreviation with its name. A message of more than ``MAX_PIECES`` sentences keeps its last ones
together as one piece (cut, as any piece, at the model's window of tokens).
"""

from __future__ import annotations

import re

MIN_WORDS = 4  # a shorter piece joins its neighbour
MAX_PIECES = 32  # sentences embedded alone per message; the rest is one last piece
# A run of end marks is matched from its first mark only (the lookbehind), so a long run that is
# not followed by white space ("....") costs its length once, not its length squared.
_END = re.compile(r"(?<![.!?…])[.!?…]+[\"'”’)\]]*(?=\s)|\n")


def split_sentences(text: str) -> list[str]:
    """The pieces of ``text`` that are embedded one by one, in order, without surrounding space.

    Args:
        text: A message.

    Returns:
        At least one piece: ``[text]`` itself when it has no sentence break, or is blank.
    """
    spans, start = [], 0
    for end in _END.finditer(text):
        spans.append((start, end.end()))
        start = end.end()
    spans.append((start, len(text)))
    merged: list[tuple[int, int]] = []
    counts: list[int] = []  # words per merged piece, kept as they grow (no recount: linear in the text)
    for begin, end in spans:
        words = len(text[begin:end].split())
        if not merged:
            if words:
                merged.append((begin, end))
                counts.append(words)
        elif words < MIN_WORDS or counts[-1] < MIN_WORDS:
            merged[-1] = (merged[-1][0], end)  # spans are consecutive: the text between stays whole
            counts[-1] += words
        else:
            merged.append((begin, end))
            counts.append(words)
    if not merged:
        return [text]
    if len(merged) > MAX_PIECES:
        merged[MAX_PIECES - 1:] = [(merged[MAX_PIECES - 1][0], merged[-1][1])]
    return [text[begin:end].strip() for begin, end in merged]
