"""Previews: a request's image from the tokens made so far, so a UI can show the picture growing patch by patch.

Tokens not generated yet are 0: the midpoint of the two binary values -1 and +1, the decoder's neutral input (it
carries no sign for any channel). The request's token buffer starts as zeros and each AR step writes its P tokens,
so a preview is the same decode as the final image with the missing patches at 0; those regions come out as the
decoder's response to a zero latent (a flat, roughly mid-grey area for a trained decoder) and the finished patches
show their content. Decoded with the request's seed (for GAN decoders' noise), like the final image
(``ModelRunner.preview``).
"""

from __future__ import annotations

from ..errors import InvalidRequestError

PREVIEW_TYPES = ("pil", "np", "pt")


def check_preview_type(output_type: str) -> None:
    if output_type not in PREVIEW_TYPES:
        raise InvalidRequestError(f"preview(output_type={output_type!r}); a preview is 'pil', 'np' or 'pt'.",
                                  param="output_type")
