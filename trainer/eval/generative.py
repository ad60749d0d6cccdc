"""Generative tasks as lm-evaluation-harness runs them: GSM8K chain of thought (`gsm8k_cot`: 8 fixed
exemplars, "The answer is N."), HumanEval (prompt completion, pass@1) and MBPP (3-shot `[BEGIN]`/`[DONE]`,
pass@1). Decoding is greedy; generated programs run in `trainer.eval.sandbox`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from textbookgen.benchmarks import BenchmarkItem
from trainer.eval.sandbox import SandboxConfig, run_many

__all__ = ["FIXED_SHOTS", "GSM8K_COT_EXEMPLARS", "flexible_extract", "gsm8k_prompt", "humaneval_program", "mbpp_prompt",
           "normalize_answer", "run_task", "strict_match"]

# lm_eval tasks/gsm8k/gsm8k-cot.yaml (Wei et al. 2022 chain-of-thought exemplars)
GSM8K_COT_EXEMPLARS = [
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
]
GSM8K_UNTIL = ["Q:", "</s>", "<|im_end|>"]
HUMANEVAL_UNTIL = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
MBPP_UNTIL = ["[DONE]"]
# lm_eval tasks/mbpp/utils.py list_fewshot_samples (MBPP prompt-split tasks 2, 3, 4)
MBPP_FEWSHOT = [
    ("Write a function to find the similar elements from the given two tuple lists.",
     "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res) ",
     ["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
      "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
      "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"]),
    ("Write a python function to identify non-prime numbers.",
     "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n"
     "        if n % i == 0:\r\n            result = True\r\n    return result",
     ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True", "assert is_not_prime(35) == True"]),
    ("Write a function to find the largest integers from a given list of numbers using heap queue algorithm.",
     "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n  return largest_nums",
     ["assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
      "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
      "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]"]),
]

# tasks whose k-shot examples are a fixed list in lm_eval (k can be at most its length)
FIXED_SHOTS = {"gsm8k": len(GSM8K_COT_EXEMPLARS), "mbpp": len(MBPP_FEWSHOT)}

_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
_FLEX = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def strict_match(text: str) -> str:
    """lm_eval gsm8k_cot "strict-match": the first "The answer is N." ("[invalid]" if none)."""
    m = _STRICT.search(text)
    return m.group(1) if m else "[invalid]"


def flexible_extract(text: str) -> str:
    """lm_eval "flexible-extract": the last number-like match in the text."""
    found = _FLEX.findall(text)
    if not found:
        return "[invalid]"
    return next(g for g in found[-1] if g)


def normalize_answer(s: str) -> str:
    """lm_eval exact_match with regexes_to_ignore [",", "\\$", "(?s).*#### ", "\\.$"] and ignore_case."""
    for pat in (",", r"\$", r"(?s).*#### ", r"\.$"):
        s = re.sub(pat, "", s)
    return s.strip().lower()


def gsm8k_prompt(question: str, k: int = 8) -> str:
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in GSM8K_COT_EXEMPLARS[:k])
    return f"{shots}Q: {question}\nA:"


def mbpp_doc_text(text: str, tests: list[str]) -> str:
    return (f"You are an expert Python programmer, and here is your task: {text} Your code should pass these "
            f"tests:\n\n{tests[0]}\n{tests[1]}\n{tests[2]}\n[BEGIN]\n")


def mbpp_prompt(item: BenchmarkItem, k: int = 3) -> str:
    shots = "".join(mbpp_doc_text(t, tests) + code + "\n[DONE]" + "\n\n" for t, code, tests in MBPP_FEWSHOT[:k])
    return shots + mbpp_doc_text(item.context, item.meta["test_list"])


def humaneval_program(item: BenchmarkItem, completion: str) -> str:
    """lm_eval/code_eval: prompt + completion, then the tests and `check(entry_point)`."""
    return item.context + completion + "\n" + item.meta["test"] + "\n" + f"check({item.meta['entry_point']})"


def mbpp_program(item: BenchmarkItem, completion: str) -> str:
    """completion, then the task's `test_setup_code` (as the original MBPP evaluation; lm_eval omits it,
    which only matters for the few tasks that have one, e.g. 367) and its asserts."""
    setup = item.meta.get("test_setup_code") or ""
    return completion + "\n" + (setup + "\n" if setup.strip() else "") + "\n".join(item.meta["test_list"])


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def run_task(lm: Any, task: str, items: list[BenchmarkItem], all_items: list[BenchmarkItem],
             num_fewshot: int | None = None, sandbox: SandboxConfig | None = None,
             gen_kwargs: Mapping[str, Any] | None = None) -> Any:
    """Generate for every item, score, and return a `TaskResult`."""
    from trainer.eval.harness import TaskResult, mean_stderr

    gen_kwargs = dict(gen_kwargs or {})
    t0 = time.perf_counter()
    if task == "gsm8k":
        k = 8 if num_fewshot is None else num_fewshot
        outs = lm.generate([gsm8k_prompt(it.context, k) for it in items],
                           max_new_tokens=gen_kwargs.get("max_new_tokens", 256), until=GSM8K_UNTIL)
        strict, flex, samples = [], [], []
        for it, out in zip(items, outs, strict=True):
            gold = normalize_answer(it.target or "")
            s, f = strict_match(out), flexible_extract(out)
            strict.append(float(normalize_answer(s) == gold))
            flex.append(float(normalize_answer(f) == gold))
            samples.append({"id": it.id, "gold": gold, "output": out, "strict": s, "flexible": f})
        metrics = {"exact_match": _mean(strict), "exact_match_flexible": _mean(flex)}
        stderr = {"exact_match": mean_stderr(strict), "exact_match_flexible": mean_stderr(flex)}
    elif task in ("humaneval", "mbpp"):
        if task == "humaneval":
            k = 0
            prompts = [it.context for it in items]
            outs = lm.generate(prompts, max_new_tokens=gen_kwargs.get("max_new_tokens", 1024), until=HUMANEVAL_UNTIL)
            programs = [humaneval_program(it, o) for it, o in zip(items, outs, strict=True)]
        else:
            k = 3 if num_fewshot is None else num_fewshot
            outs = lm.generate([mbpp_prompt(it, k) for it in items],
                               max_new_tokens=gen_kwargs.get("max_new_tokens", 256), until=MBPP_UNTIL)
            programs = [mbpp_program(it, o) for it, o in zip(items, outs, strict=True)]
        results = run_many(programs, sandbox or SandboxConfig(timeout_s=3.0))
        passed = [float(r.passed) for r in results]
        samples = [{"id": it.id, "completion": o, "status": r.status, "stderr": r.stderr[-500:]}
                   for it, o, r in zip(items, outs, results, strict=True)]
        metrics, stderr = {"pass@1": _mean(passed)}, {"pass@1": mean_stderr(passed)}
    else:
        raise ValueError(f"{task!r} is not a generative task")
    return TaskResult(task, len(items), metrics, stderr, num_fewshot=k, seconds=time.perf_counter() - t0,
                      samples=samples)
