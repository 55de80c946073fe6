"""The bundled sample: fictional KardiaBench-style dialogues written for kardia-jax
(train.jsonl / test.jsonl, profile-disjoint) and the script that generates them."""
