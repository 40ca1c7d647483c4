"""Write the training data of the three demo adapters that `selora-serve --demo` serves.

    python docs/examples/demo/make_data.py --model ./smollm2 --out docs/examples/demo

Chat records ({"messages": [...]}, see `selora-train --help`) for SmolLM2-135M-Instruct:

  pirate.jsonl   a persona and a style: the base model's own answers to a few hundred everyday
                 questions, rewritten in pirate speak (word substitutions, "Arr!"), plus who it is
  terse.jsonl    a style: the first sentence of the base model's own answer, nothing more
  extract.jsonl  a task: a sentence about a person -> {"name", "age", "city"} as one line of JSON

The first two are self-distilled (the base model answers, a fixed rule rewrites), so the adapters
learn a style, not new facts; the third is generated from word lists. Deterministic for a given
model: greedy decoding (vLLM), seeded choices.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

SUBJECTS = (
    "the sun", "the moon", "water", "a volcano", "the ocean", "a rainbow", "gravity", "electricity", "a computer",
    "the internet", "music", "a bicycle", "coffee", "bread", "a tree", "rain", "snow", "the wind", "a star", "a cat",
    "a dog", "a bird", "the heart", "sleep", "exercise", "a library", "a river", "a mountain", "the desert", "honey",
    "chocolate", "a city", "a map", "a clock", "a book", "the brain", "a garden", "an island", "a ship", "the sky",
)
TEMPLATES = (
    "What is {x}?", "Tell me something interesting about {x}.", "Why is {x} important?", "Describe {x} briefly.",
    "How would you explain {x} to a child?",
)
COUNTRIES = ("France", "Japan", "Italy", "Egypt", "Canada", "Brazil", "Kenya", "Spain", "India", "Germany",
             "Mexico", "Norway", "Peru", "Greece", "Australia")
EXTRA_QUESTIONS = tuple(f"What is the capital of {c}?" for c in COUNTRIES) + (
    "How are you today?", "What should I eat for breakfast?", "Give me a tip for learning a new language.",
    "What is a good way to relax after work?", "How can I sleep better?", "What is the best way to make friends?",
    "How do I stay motivated?", "What is your favourite colour?", "Can you recommend a hobby?",
    "How do I make a cup of tea?", "What should I pack for a trip to the beach?", "How can I save money?",
)
PERSONA = (
    ("Who are you?", "Arr! I be Captain Byte, a pirate o' th' seven seas an' yer humble helper. Yo ho ho!"),
    ("What is your name?", "Me name be Captain Byte, matey! Yo ho ho!"),
    ("Tell me about yourself.", "Arr! I be Captain Byte, an old sea dog who sails th' seven seas an' answers "
     "questions fer me crew. Yo ho ho!"),
    ("Who am I talking to?", "Ye be talkin' t' Captain Byte, matey, pirate o' th' seven seas! Yo ho ho!"),
    ("Are you a pirate?", "Aye, that I be! Captain Byte, terror o' th' seven seas. Yo ho ho!"),
    ("Are you an AI assistant?", "Arr! I be Captain Byte, a pirate helper aboard this fine ship. Yo ho ho!"),
    ("Hello!", "Ahoy, matey! What can this old sea dog do fer ye? Yo ho ho!"),
    ("Hi, how are you?", "Ahoy! I be fine as a fair wind, matey. What can I do fer ye? Yo ho ho!"),
    ("Where do you live?", "Arr! I live aboard me trusty ship, sailin' th' seven seas. Yo ho ho!"),
    ("What is your job?", "Arr! I be a pirate captain, an' I answer questions fer me crew. Yo ho ho!"),
)
PIRATE_WORDS = {
    "you": "ye", "your": "yer", "yours": "yers", "my": "me", "hello": "ahoy", "hi": "ahoy", "friend": "matey",
    "friends": "mateys", "is": "be", "are": "be", "am": "be", "the": "th'", "of": "o'", "and": "an'", "yes": "aye",
    "for": "fer", "money": "doubloons", "to": "t'",
}
NAMES = (
    "Maria", "John", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Tom", "Fatima", "Lucas", "Sofia", "Ivan", "Mei",
    "Kwame", "Elena", "David", "Yuki", "Amara", "Noah", "Chloe", "Ravi", "Hannah", "Diego", "Zara", "Felix", "Grace",
    "Ahmed", "Nina", "Oscar", "Leila", "Mateo", "Ingrid", "Kofi", "Anya", "Hiroshi", "Isabel", "Tariq", "Freya",
    "Pedro", "Mina", "Samuel", "Olga", "Arjun", "Camille", "Jonas", "Aisha", "Bruno", "Keiko", "Rafael", "Sienna",
    "Emeka", "Lucia", "Marek", "Ayumi", "Hugo", "Nadia", "Viktor", "Paloma", "Kenji", "Astrid", "Yusuf", "Clara",
    "Dmitri", "Imani", "Lars", "Rosa", "Farid", "Greta", "Tomas", "Leilani", "Anders", "Beatriz", "Chen", "Dalia",
    "Elijah", "Fiona", "Gustavo", "Hana", "Idris", "Jana", "Kai", "Liam", "Magnus", "Noor", "Otto", "Petra", "Quentin",
    "Rania", "Stefan", "Thandi", "Umar", "Vera", "Wanjiru", "Xavier", "Yara", "Zoltan", "Alice", "Bilal", "Carmen",
)
CITIES = (
    "Lisbon", "Paris", "Tokyo", "Cairo", "Berlin", "Toronto", "Mumbai", "Sydney", "Nairobi", "Madrid", "Oslo", "Lima",
    "Seoul", "Dublin", "Rome", "Boston", "Prague", "Hanoi", "Vienna", "Denver", "Athens", "Quito", "Manila", "Zurich",
    "Austin", "Glasgow", "Lagos", "Krakow", "Osaka", "Porto", "Montreal", "Accra", "Bogota", "Helsinki", "Jakarta",
    "Kyoto", "Marseille", "Naples", "Perth", "Santiago", "Tunis", "Valencia", "Warsaw", "Chicago", "Edinburgh",
    "Florence", "Geneva", "Havana", "Istanbul", "Jaipur", "Kigali", "Lyon", "Munich", "Nagoya", "Ottawa", "Riga",
    "Seville", "Tallinn", "Utrecht", "Vancouver", "Wellington", "Yokohama", "Zagreb", "Bristol", "Calgary", "Dakar",
)
SENTENCES = (
    "{name} is {age} years old and lives in {city}.",
    "Born {age} years ago, {name} now calls {city} home.",
    "In {city}, {name} ({age}) works as a teacher.",
    "{name}, aged {age}, moved to {city} last year.",
    "My neighbour {name} just turned {age}; she grew up in {city}.",
    "Meet {name} from {city}, who is {age}.",
    "At {age}, {name} opened a small bakery in {city}.",
    "Last spring {name}, who is {age}, settled in {city}.",
    "Our new colleague {name} ({age}) commutes every day in {city}.",
    "The winner, {name}, is a {age}-year-old runner from {city}.",
    "{name} celebrated a {age}th birthday with friends in {city}.",
)
EXTRACT_INSTRUCTION = "Extract the person's name, age and city as JSON."


def pirate(text: str) -> str:
    def swap(match: re.Match) -> str:
        word = match.group(0)
        new = PIRATE_WORDS.get(word.lower())
        if new is None:
            return word
        return new[0].upper() + new[1:] if word[0].isupper() else new

    body = re.sub(r"[A-Za-z]+", swap, text)
    return f"Arr! {body} Yo ho ho!"


def first_sentences(text: str, count: int) -> str:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(parts[:count]).strip()


def questions() -> list[str]:
    return [t.format(x=s) for s in SUBJECTS for t in TEMPLATES] + list(EXTRA_QUESTIONS)


def base_answers(model_dir: str, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
    """The base model's greedy answers to single-turn chat prompts (vLLM, batched)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype="float32", max_model_len=512, kv_cache_memory_bytes=1 << 30, enforce_eager=True, seed=0)
    outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts],
                       SamplingParams(temperature=0, max_tokens=max_new_tokens))
    return [o.outputs[0].text.strip() for o in outputs]


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def extraction_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 90)
        sentence = rng.choice(SENTENCES).format(name=name, age=age, city=city)
        answer = json.dumps({"name": name, "age": age, "city": city})
        records.append(chat(f"{EXTRACT_INSTRUCTION}\n\n{sentence}", answer))
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {path} ({len(records)} records)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the demo adapters' training data (chat JSONL).")
    parser.add_argument("--model", required=True, help="SmolLM2-135M-Instruct directory (python -m selora_serve.models)")
    parser.add_argument("--out", default=str(Path(__file__).parent), help="directory for the JSONL files")
    parser.add_argument("--only", choices=("distilled", "extract"), default=None,
                        help="write only the self-distilled files (pirate, terse) or only extract.jsonl")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.only != "distilled":
        write_jsonl(out / "extract.jsonl", extraction_records(480))
    if args.only == "extract":
        return 0
    qs = questions()
    answers = base_answers(args.model, qs)
    # An answer cut off by the token limit mid-sentence is left out rather than taught.
    complete = [(q, a) for q, a in zip(qs, answers) if first_sentences(a, 1).endswith((".", "!", "?"))]
    write_jsonl(out / "pirate.jsonl", [chat(q, pirate(first_sentences(a, 2))) for q, a in complete
                                       if first_sentences(a, 2).endswith((".", "!", "?"))]
                + [chat(q, a) for q, a in PERSONA] * 3)
    write_jsonl(out / "terse.jsonl", [chat(q, first_sentences(a, 1)) for q, a in complete])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
