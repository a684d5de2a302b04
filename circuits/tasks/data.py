"""The published word lists and templates of the built-in tasks.

IOI (Wang et al. 2022, arXiv 2211.00593): names, places, objects and the 15 BABA templates exactly as in the
authors' dataset code (redwoodresearch/Easy-Transformer ``ioi_dataset.py``, reused unchanged by ACDC in
``acdc/ioi/ioi_dataset.py``); the 15 ABBA templates swap the first clause's two names, as that code does.
All 99 names, 8 places and 8 objects are single GPT-2 tokens with a leading space (checked by the tests).

Greater-than (Hanna, Liu & Variengien 2023, arXiv 2305.00586): the nouns of the paper's dataset, as ACDC
re-encodes them in ``acdc/greaterthan/utils.py`` (all single GPT-2 tokens with a leading space), the sentence
"The {noun} lasted from the year XXYY to the year XX", and ACDC's centuries 11..17 (1100-1799).
"""

from __future__ import annotations

import re

IOI_NAMES = [
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda",
    "Daniel", "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan",
    "Brandon", "Jason", "Justin", "Sarah", "William", "Jonathan", "Stephanie", "Brian",
    "Nicole", "Nicholas", "Anthony", "Heather", "Eric", "Elizabeth", "Adam", "Megan",
    "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle", "Rachel",
    "Laura", "Lauren", "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey",
    "Amy", "Crystal", "Michelle", "Tiffany", "Jeremy", "Benjamin", "Mark", "Emily",
    "Aaron", "Charles", "Rebecca", "Jacob", "Stephen", "Patrick", "Sean", "Erin",
    "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin", "Paul", "Angela",
    "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis",
    "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander", "Jesse",
    "Katie", "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia", "Cody",
    "Allison", "Bradley", "Samuel",
]

IOI_PLACES = [
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
]

IOI_OBJECTS = [
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
]

# Wang et al.'s BABA templates, verbatim ([B] = subject S, [A] = indirect object IO).
IOI_BABA_PUBLISHED = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
]



def _to_slots(template: str, abba: bool) -> str:
    """Published [A]/[B] form -> slot form: first S -> {S}, first IO -> {IO}, second S -> {S2}, last IO -> {IO}.

    ABBA swaps the first clause's two names, as the authors' code does (their first [B] and [A] trade places).
    """
    parts = re.split(r"(\[A\]|\[B\]|\[PLACE\]|\[OBJECT\])", template)
    seen = {"[A]": 0, "[B]": 0}
    out = []
    for part in parts:
        if part in seen:
            seen[part] += 1
            first_clause = seen[part] == 1
            if part == "[B]":
                name = "S" if first_clause else "S2"
            else:
                name = "IO"
            if abba and first_clause:  # swap the two names of the first clause
                name = {"S": "IO", "IO": "S"}[name]
            out.append("{" + name + "}")
        elif part in ("[PLACE]", "[OBJECT]"):
            out.append("{" + part[1:-1] + "}")
        else:
            out.append(part)
    return "".join(out)


IOI_BABA_TEMPLATES = [_to_slots(t, abba=False) for t in IOI_BABA_PUBLISHED]
IOI_ABBA_TEMPLATES = [_to_slots(t, abba=True) for t in IOI_BABA_PUBLISHED]
#: All 30 templates: Wang et al.'s "mixed" distribution (BABA first, then ABBA).
IOI_TEMPLATES = IOI_BABA_TEMPLATES + IOI_ABBA_TEMPLATES

GREATER_THAN_NOUNS = [
    "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment", "attack",
    "attempts", "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration",
    "coma", "competition", "confrontation", "consequence", "conspiracy", "construction", "consultation", "contact",
    "contract", "convention", "cooperation", "custody", "deal", "decline", "decrease", "demonstrations",
    "development", "disagreement", "disorder", "dispute", "domination", "dynasty", "effect", "effort",
    "employment", "endeavor", "engagement", "epidemic", "evaluation", "exchange", "existence", "expansion",
    "expedition", "experiments", "fall", "fame", "flights", "friendship", "growth", "hardship",
    "hostility", "illness", "impact", "imprisonment", "improvement", "incarceration", "increase", "insurgency",
    "invasion", "investigation", "journey", "kingdom", "marriage", "modernization", "negotiation", "notoriety",
    "obstruction", "operation", "order", "outbreak", "outcome", "overhaul", "patrols", "pilgrimage",
    "plague", "plan", "practice", "process", "program", "progress", "project", "pursuit",
    "quest", "raids", "reforms", "reign", "relationship", "retaliation", "riot", "rise",
    "rivalry", "romance", "rule", "sanctions", "shift", "siege", "slump", "stature",
    "stint", "strikes", "study", "test", "testing", "tests", "therapy", "tour",
    "tradition", "treaty", "trial", "trip", "unemployment", "voyage", "warfare", "work",
]

GREATER_THAN_TEMPLATE = "The {NOUN} lasted from the year {XX}{YY} to the year {XX}{YY}"
GREATER_THAN_CENTURIES = [str(c) for c in range(11, 18)]  # ACDC's 1100-1799
GREATER_THAN_YY = [f"{i:02d}" for i in range(2, 99)]         # YY in 02..98, as Hanna et al.
TWO_DIGITS = [f"{i:02d}" for i in range(100)]                # the 100 two-digit tokens the metric sums over

#: Word lists a task file may name instead of spelling them out (e.g. ``IO = "ioi_names"``).
BUILTIN_VOCABULARIES = {
    "ioi_names": IOI_NAMES,
    "ioi_places": IOI_PLACES,
    "ioi_objects": IOI_OBJECTS,
    "greater_than_nouns": GREATER_THAN_NOUNS,
    "greater_than_centuries": GREATER_THAN_CENTURIES,
    "greater_than_yy": GREATER_THAN_YY,
    "two_digits": TWO_DIGITS,
}
