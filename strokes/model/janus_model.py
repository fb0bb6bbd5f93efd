"""Janus-Pro with one vocabulary: text ids, then image codes (`JanusUnified`).

`JanusForConditionalGeneration` keeps image generation apart from text: a generated image's codes
are fed back through `generation_embeddings` + `generation_aligner` and predicted by
`generation_head` (over the VQ codebook), while text goes through `embed_tokens` and `lm_head`.
Our rollout decoder samples every token from one logits vector under one grammar mask, and the
trainer's losses and GRPO log-probs are one cross-entropy over one vocabulary. `JanusUnified` is the
same model, same weights and module names (a Janus checkpoint loads into it as it is), with a
forward that presents the two as one vocabulary of `V + K` ids, `V` the language model's vocabulary
(`text_config.vocab_size`) and `K` the codebook:

- input: ids `< V` go through `embed_tokens`, ids `V + k` through `generation_aligner(generation_embeddings(k))`
  (what Janus's own `generate` feeds back after sampling code `k`);
- output: `lm_head(h)` concatenated with `generation_head(h)`, so logits are `[..., V + K]`.

Everything else (the Llama text model, its KV cache, position ids, packed rows) is Janus's own.
The SigLIP understanding encoder (`vision_model`, `aligner`) stays in the model and its checkpoint
but is not used: sketches are read back as their codes, as Janus reads the codes it generates.

Importing this module registers `JanusUnified` as `AutoModelForCausalLM`'s class for Janus configs
(Janus has none of its own). TRL's GRPO trainer, fine-tuning every weight with a KL term, loads its
reference model from the policy's folder by the config's `architectures` and, for a class that is
not in `transformers`, through `AutoModelForCausalLM` (once the config has an `auto_map`, which
`JANUS_AUTO_MAP` gives it): so the reference is the same one-vocabulary model.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, JanusConfig, JanusForConditionalGeneration
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.janus.modeling_janus import JanusCausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg


class JanusUnified(JanusForConditionalGeneration):
    """`JanusForConditionalGeneration` whose forward speaks one vocabulary: text ids, then codes."""

    @property
    def code_offset(self) -> int:
        """Id of code 0: the language model head's size."""
        return int(self.lm_head.out_features)

    def embed(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Input embeddings of text ids and code ids (`code_offset + k`), each through its own table."""
        v = self.code_offset
        is_code = (input_ids >= v)[..., None]
        text = self.get_input_embeddings()(input_ids.clamp(max=v - 1))
        codes = self.prepare_embeddings_for_image_generation((input_ids - v).clamp(min=0))
        return torch.where(is_code, codes.to(text.dtype), text)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache=None, inputs_embeds: torch.Tensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        out = self.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                        position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs)
        h = slice_logits_to_keep(out.last_hidden_state, logits_to_keep)
        logits = torch.cat([self.lm_head(h), self.model.generation_head(h).to(h.dtype)], -1)
        return JanusCausalLMOutputWithPast(logits=logits, cache=out.cache, hidden_states=out.hidden_states,
                                           attentions=out.attentions)


AutoModelForCausalLM.register(JanusConfig, JanusUnified, exist_ok=True)
JANUS_AUTO_MAP: dict = {}
"""`config.auto_map` of a saved policy: empty (no remote code), present so that TRL falls back to
`AutoModelForCausalLM` for a class `transformers` does not export (`trl.trainer.utils.create_model_from_path`)."""
