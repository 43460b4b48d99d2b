"""Front ends on the runtime: a diffusers-convention pipeline (``BitDancePipeline``, needs the ``diffusers``
extra) and a Gradio app (``gradio_app``, needs the ``gradio`` extra).

Nothing here is imported by ``import bitdance_rt``; ``bitdance_rt.BitDancePipeline`` loads
``diffusers_pipeline`` on first use, so the runtime works without either extra.
"""
