"""Text-to-image prompt tokenization (the model directory's ``tokenizer.json`` through ``tokenizers``).

Builds the two sequences the release feeds the backbone: the chat-templated prompt, then the image start tokens
``<|vision_start|> <|res_H|> <|res_W|> <|query_1|> … <|query_{P−1}|>``.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError, InvalidRequestError

VISION_START = "<|vision_start|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")


def chat_prompt(prompt: str | None) -> str:
    """The release's template; ``None`` gives the unconditional prompt."""
    if prompt is None:
        return "<|im_start|>assistant\n"
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def resolution_token(n: int) -> str:
    return f"<|res_{n}|>"


def query_token(i: int) -> str:
    return f"<|query_{i}|>"


class PromptTokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        file = path / "tokenizer.json"
        if not file.is_file():
            raise CheckpointError(f"{path}: tokenizer.json not found; the text-to-image directory needs the "
                                  "Hugging Face tokenizer files. Download the complete model directory.")
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as e:
            raise CheckpointError(f"{file}: cannot be read by `tokenizers` ({e}); the file is damaged.") from e
        self.path = file

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def check_special_tokens(self, parallel: int, grid_sides: set[int]) -> None:
        """Every special token generation needs must exist; lists all missing ones at once."""
        needed = [*CHAT_TOKENS, VISION_START, *(query_token(i) for i in range(1, parallel)),
                  *(resolution_token(n) for n in sorted(grid_sides))]
        missing = [t for t in needed if self.token_id(t) is None]
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise CheckpointError(f"{self.path}: the tokenizer lacks special token(s) {shown} that BitDance "
                                  "generation needs; use the tokenizer shipped with the BitDance checkpoint.")

    def image_start_ids(self, grid_h: int, grid_w: int, parallel: int) -> list[int]:
        ids = [self.token_id(VISION_START), self.token_id(resolution_token(grid_h)),
               self.token_id(resolution_token(grid_w)), *(self.token_id(query_token(i)) for i in range(1, parallel))]
        if any(i is None for i in ids):
            raise InvalidRequestError(f"the tokenizer has no resolution token for a {grid_h}x{grid_w} token grid")
        return ids
