"""The released Wan2.1 text-to-video transformer configs (diffusers `WanTransformer3DModel` keys).

Kept here so that the real sizes can be shape-checked on the `meta` device without downloads, and
so that recipes can name them. Values as published with `Wan2.1-T2V-{1.3B,14B}-Diffusers`.
"""

_COMMON = dict(
    patch_size=(1, 2, 2),
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)

WAN21_T2V_1_3B = dict(_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30)
WAN21_T2V_14B = dict(_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40)

WAN21_T2V_CONFIGS = {"Wan2.1-T2V-1.3B": WAN21_T2V_1_3B, "Wan2.1-T2V-14B": WAN21_T2V_14B}
