"""Built-in prompt generation: composable topic x task grammars that need no external data.

Benign personas and attack families draw from the same grammar, so content alone never
separates them (as in reality: an extraction campaign asks the questions real users ask).
What differs is how prompts are sequenced, repeated, perturbed and parameterised.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

LANGS = ["Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C++", "SQL", "Bash", "Kotlin", "Ruby", "C#"]
CODE_OBJECTS = [
    "a function that parses ISO dates", "a retry decorator with exponential backoff", "a LRU cache",
    "a CSV to JSON converter", "a binary search over a sorted list", "a rate limiter", "a trie",
    "a REST client with pagination", "a unit test for a shopping cart", "a regex for email addresses",
    "a thread-safe queue", "a merge of two sorted arrays", "a config loader with defaults",
    "a CLI that renames files", "a websocket echo server", "a Dijkstra shortest path",
    "a function that deduplicates records", "a pandas groupby report", "a React hook for debouncing",
    "a SQL query for monthly active users", "a Dockerfile for a Flask app", "a linked list reversal",
]
CODE_TASKS = [
    "Write {obj} in {lang}.", "How do I write {obj} in {lang}?", "Refactor {obj} in {lang} for readability.",
    "Explain this {lang} error: {err}", "Why is my {lang} code for {obj} slow?", "Add type hints to {obj} in {lang}.",
    "Convert {obj} from {lang} to {lang2}.", "Review my {lang} implementation of {obj}:\n{code}",
    "What is the time complexity of {obj}?", "Write tests for {obj} in {lang}.", "Fix the bug:\n{code}",
]
ERRORS = [
    "KeyError: 'id'", "TypeError: cannot read properties of undefined", "segmentation fault (core dumped)",
    "borrowed value does not live long enough", "NullPointerException at line {n}", "IndexError: list index out of range",
    "deadlock detected", "ModuleNotFoundError: No module named '{word}'", "connection reset by peer",
]
CODE_SNIPPETS = [
    "def f(xs):\n    return [x for x in xs if x > {n}]", "for (let i = 0; i <= arr.length; i++) { sum += arr[i]; }",
    "SELECT * FROM orders WHERE total > {n} GROUP BY customer_id;", "fn main() { let v = vec![{n}, 2]; println!(\"{:?}\", v); }",
    "while True:\n    data = sock.recv({n})\n    if not data: break", "x = dict(zip(keys, values))\nprint(x['{word}'])",
]
MATH_TASKS = [
    "Solve for x: {a}x + {b} = {c}.", "What is the derivative of x^{a} * sin(x)?", "Integrate {a}x^2 + {b}x dx.",
    "Prove that the sum of the first n odd numbers is n^2.", "A train travels {a} km in {b} hours. What is its speed?",
    "What is {a} * {b} + {c}?", "Is {c} a prime number?", "Find the eigenvalues of [[{a}, {b}], [{b}, {c}]].",
    "What is the probability of rolling a sum of {a} with two dice?", "Simplify ({a}x + {b})({a}x - {b}).",
    "Compute the limit of (1 + 1/n)^n as n goes to infinity.", "How many ways can {a} people sit around a round table?",
]
TOPICS = [
    "climate change", "the French Revolution", "quantum computing", "photosynthesis", "the stock market",
    "machine learning", "the Roman Empire", "black holes", "vaccines", "inflation", "renewable energy",
    "the human immune system", "blockchain", "sleep", "urban planning", "the history of jazz", "coral reefs",
    "supply chains", "game theory", "the printing press", "antibiotic resistance", "volcanoes", "microservices",
    "meditation", "electric cars", "the Cold War", "CRISPR", "remote work", "nutrition", "plate tectonics",
    "cryptography", "the water cycle", "social media", "ancient Egypt", "neural networks", "tax policy",
]
WRITING_TASKS = [
    "Write a short poem about {topic}.", "Write a blog post introduction about {topic}.",
    "Write a {n}-word essay on {topic}.", "Draft an email to my manager asking for {thing}.",
    "Write a product description for {product}.", "Write a cover letter for a {job} position.",
    "Rewrite this paragraph to sound more professional: {para}", "Write a story about {name} and {topic}.",
    "Give me five titles for an article about {topic}.", "Write a tweet announcing {product}.",
    "Summarize {topic} for a ten-year-old.", "Write a limerick about {name}.",
]
QA_TASKS = [
    "What is {topic}?", "Explain {topic} in simple terms.", "What are the pros and cons of {topic}?",
    "How does {topic} work?", "Who invented {thing}?", "Why is {topic} important?", "Compare {topic} and {topic2}.",
    "What are the main causes of {topic}?", "Give me a timeline of {topic}.", "What should I know about {topic}?",
    "Can you recommend books about {topic}?", "What is the difference between {topic} and {topic2}?",
]
TRANSLATION_TASKS = [
    "Translate to {lang_h}: {sentence}", "How do you say '{sentence}' in {lang_h}?",
    "Translate this {lang_h} text into English: {sentence}", "Correct the grammar: {sentence}",
]
EXTRACTION_TASKS = [
    "Extract all dates and amounts from this invoice: {doc}", "List the people mentioned in: {doc}",
    "Return JSON with fields name, email, company from: {doc}", "Classify the sentiment of this review: {review}",
    "Summarize this document in three bullet points: {doc}", "Tag the topic of this ticket: {review}",
]
ROLEPLAY_TASKS = [
    "You are a {job}. A customer asks about {thing}. Respond in character.",
    "Pretend you are {name}, a famous {job}. Tell me about {topic}.", "Act as my {job} and help me plan {thing}.",
    "Let's play a game: you are a dungeon master and I am {name} the {job}.",
]
TOOL_TASKS = [
    "Call the weather tool for {city} and summarise the forecast.", "Search the database for orders by {name}.",
    "Use the calculator to compute {a} * {b}.", "Book a meeting with {name} next {day} at {a}pm.",
    "Fetch the latest exchange rate for {cur} and convert {c} units.", "List files in the {word} directory.",
]
LANG_H = ["French", "German", "Spanish", "Japanese", "Chinese", "Italian", "Portuguese", "Korean", "Hindi", "Arabic", "Dutch"]
SENTENCES = [
    "the invoice is overdue", "where is the train station", "I would like a coffee please",
    "the meeting has been moved to Tuesday", "our servers will be down for maintenance",
    "thank you for your patience", "please sign the attached contract", "the weather is lovely today",
    "can you send me the report", "my flight was cancelled", "the package arrives tomorrow",
]
THINGS = [
    "a raise", "time off", "the telephone", "a new laptop", "a budget increase", "the internet", "a vacation",
    "a birthday party", "a product launch", "a wedding", "a home renovation", "a marketing campaign",
]
PRODUCTS = ["a smart water bottle", "noise-cancelling headphones", "an electric bike", "a budgeting app", "a standing desk", "organic coffee"]
JOBS = ["software engineer", "data analyst", "nurse", "teacher", "chef", "lawyer", "financial advisor", "travel agent", "detective", "wizard"]
NAMES = ["Alice", "Bob", "Priya", "Wei", "Fatima", "Carlos", "Olga", "Kenji", "Amara", "Lucas", "Sofia", "Dmitri", "Aisha", "Mateo"]
CITIES = ["Paris", "Tokyo", "Lagos", "Lima", "Berlin", "Toronto", "Mumbai", "Sydney", "Cairo", "Seoul"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
CURRENCIES = ["EUR", "JPY", "GBP", "INR", "BRL", "CHF"]
WORDS = [
    "alpha", "report", "config", "users", "billing", "cache", "staging", "metrics", "legacy", "archive",
    "orders", "session", "token", "payload", "vector", "cluster", "widget", "ledger", "signal", "kernel",
]
REVIEWS = [
    "The battery died after two days, very disappointed.", "Absolutely love it, works as described!",
    "Shipping was slow but the product is fine.", "Customer support never answered my emails.",
    "Great value for the price, would buy again.", "The app crashes every time I open settings.",
]
DOC_PARTS = [
    "Invoice #{n} issued to {name} on 2024-0{d}-1{d} for {c} USD.", "{name} from {city} met {name2} to discuss {topic}.",
    "Payment of {c} EUR due within {a} days.", "Contact: {name_l}@example.com, phone +1-555-01{a}{b}.",
    "The committee approved the budget for {topic} on {day}.", "Order {n} shipped to {city}; tracking {word}-{c}.",
]
FOLLOW_UPS = [
    "Can you make it shorter?", "Thanks! Now add error handling.", "Why does that work?", "Can you give an example?",
    "That didn't work, I get {err}", "Explain the second step again.", "Now translate it to {lang_h}.",
    "What about edge cases?", "Make it more formal.", "Great. What else should I consider?", "ok and how about {topic}?",
    # Real chat turns are often a word or two; without these the shortest turn was 20 characters.
    "ok", "thanks!", "continue", "why?", "more", "?", "yes", "shorter pls", "go on",
]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.", "You are {app}'s support assistant. Answer briefly and politely.",
    "You are an expert {job}. Answer precisely.", "Reply in JSON only.", "You are a tutor for {topic}. Be encouraging.",
]
REASONING_SUFFIXES = [
    " Think step by step and show all of your reasoning.", " Explain your reasoning in detail before giving the final answer.",
    " Show your full chain of thought, then the answer.", " Let's think step by step.", " Walk through every step carefully.",
]

DOMAINS: dict[str, list[str]] = {
    "code": CODE_TASKS,
    "math": MATH_TASKS,
    "writing": WRITING_TASKS,
    "qa": QA_TASKS,
    "translation": TRANSLATION_TASKS,
    "extraction": EXTRACTION_TASKS,
    "roleplay": ROLEPLAY_TASKS,
    "tools": TOOL_TASKS,
}
DOMAIN_NAMES = sorted(DOMAINS)


_KNOWN = {
    "a", "b", "c", "d", "n", "lang", "lang2", "obj", "topic", "topic2", "thing", "product", "job", "name", "name2",
    "city", "day", "cur", "word", "lang_h", "sentence", "review", "name_l", "err", "code", "doc", "para",
}


class _Slots(dict):
    """Fills template slots lazily, so each template only pays for the slots it uses."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    def __missing__(self, key: str) -> str:
        r = self.rng
        if key in ("a", "b", "d"):
            return str(r.randint(1, 9) if key == "d" else r.randint(2, 99))
        if key in ("c", "n"):
            return str(r.randint(10, 5000))
        table = {
            "lang": LANGS, "lang2": LANGS, "obj": CODE_OBJECTS, "topic": TOPICS, "topic2": TOPICS, "thing": THINGS,
            "product": PRODUCTS, "job": JOBS, "name": NAMES, "name2": NAMES, "city": CITIES, "day": DAYS,
            "cur": CURRENCIES, "word": WORDS, "lang_h": LANG_H, "sentence": SENTENCES, "review": REVIEWS,
        }
        if key in table:
            return r.choice(table[key])
        if key == "name_l":
            return r.choice(NAMES).lower()
        if key == "err":
            return fill(r.choice(ERRORS), r)
        if key == "code":
            return fill(r.choice(CODE_SNIPPETS), r)
        if key == "doc":
            return " ".join(fill(p, r) for p in r.sample(DOC_PARTS, r.randint(2, 4)))
        if key == "para":
            return " ".join(fill(p, r) for p in r.sample(DOC_PARTS, 2))
        raise KeyError(key)


_SLOT = re.compile(r"\{([a-z][a-z0-9_]*)\}")


def fill(template: str, rng: random.Random) -> str:
    """Replace `{slot}` markers; other braces (JSON, code) are left as they are."""
    slots = _Slots(rng)
    return _SLOT.sub(lambda m: slots[m.group(1)] if m.group(1) in _KNOWN else m.group(0), template)


def system_prompt(rng: random.Random) -> str:
    """A system prompt as apps set them; benign and attack traffic share the pool."""
    return fill(rng.choice(SYSTEM_PROMPTS).replace("{app}", rng.choice(["Acme", "Docly", "Shopr", "Fintra"])), rng)


@dataclass(frozen=True)
class Template:
    domain: str
    text: str

    def render(self, rng: random.Random) -> str:
        return fill(self.text, rng)


class PromptGrammar:
    """Draws prompts from the topic x task grammar, optionally mixed with real corpus prompts."""

    def __init__(self, corpus: list[str] | None = None, corpus_share: float = 0.35) -> None:
        self.corpus = corpus or []
        self.corpus_share = corpus_share if self.corpus else 0.0

    def template(self, rng: random.Random, domain: str | None = None) -> Template:
        domain = domain or rng.choice(DOMAIN_NAMES)
        return Template(domain, rng.choice(DOMAINS[domain]))

    def prompt(self, rng: random.Random, domain: str | None = None, share: float | None = None) -> str:
        """A grammar prompt, or a corpus prompt with probability `share` (default: the grammar's
        own share). Actors that draw their own share vary where their prompts come from."""
        share = self.corpus_share if share is None else share
        if self.corpus and rng.random() < share:
            return rng.choice(self.corpus)
        return self.template(rng, domain).render(rng)

    def follow_up(self, rng: random.Random) -> str:
        return fill(rng.choice(FOLLOW_UPS), rng)

    def answer(self, rng: random.Random, prompt: str) -> str:
        """A stand-in assistant reply for multi-turn histories; only its length and shape matter."""
        words = prompt.split()[:12]
        body = " ".join(rng.choice(WORDS + words) for _ in range(rng.randint(8, 80)))
        return f"Sure. {body}."


def perturb(text: str, rng: random.Random, strength: float) -> str:
    """Small random edits (word drops, swaps, substitutions): paraphrase-like neighbours of a seed."""
    words = text.split()
    if not words:
        return text
    edits = max(1, int(len(words) * strength))
    for _ in range(edits):
        op = rng.random()
        i = rng.randrange(len(words))
        if op < 0.35 and len(words) > 3:
            del words[i]
        elif op < 0.7:
            words[i] = rng.choice(WORDS + NAMES + TOPICS[:5])
        else:
            j = rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
    return " ".join(words)


PARAPHRASE_FRAMES = [
    "{x}", "{x}", "Please {x}", "Quick question: {x}", "{x} Be concise.", "{x} Answer briefly.",
    "Hi! {x}", "{x} Thanks.", "Could you help: {x}", "{x}?", "I was wondering, {x}",
]


def paraphrase(text: str, rng: random.Random, strength: float) -> str:
    """A small paraphrase of a seed: a few word edits and sometimes a polite frame or a changed
    case, the neighbours a boundary prober sends to see where an answer flips."""
    edited = perturb(text, rng, strength) if rng.random() < 0.8 else text
    if rng.random() < 0.15:
        edited = edited.lower()
    return rng.choice(PARAPHRASE_FRAMES).replace("{x}", edited)


def random_words(rng: random.Random, n: int, vocab: list[str] | None = None) -> str:
    """Random word sequences (Krishna et al. 2020): nonsense prompts with a real vocabulary."""
    pool = vocab or (WORDS + TOPICS + NAMES + CITIES + JOBS + LANG_H)
    return " ".join(rng.choice(pool) for _ in range(n))
