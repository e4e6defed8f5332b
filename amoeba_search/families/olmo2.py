"""OLMo 2: post-norm blocks whose q_norm / k_norm normalise all heads together (an RMS over heads x head_dim), so
removing a head changes every other head's scale: head pruning is refused; depth and MLP width are exact.
`attention_bias` gives o_proj a bias, the MLP has none."""

from .base import SPLIT, Family, register_family

register_family("olmo2", Family("olmo2", SPLIT, bias_flags={"self_attn.o_proj": {"attention_bias": True}},
                                head_pruning_refusal="q_norm / k_norm normalise over all heads together",
                                gguf_arch="olmo2"))
