"""Loomstack's Aris plugin: Aris's recruiting and analysis product on the generic core.

Aris speaks of conquests and philosophers; the core knows none of its words. The mapping:

| Aris (this plugin)            | Loomstack core                                              |
|-------------------------------|-------------------------------------------------------------|
| conquest                      | a batch of requests, its curation tasks, its dataset examples |
| conquest type (CANDIDATE, …)  | `schema_type`: the plugin's schema `aris.<type>`            |
| philosopher                   | `user_email` (exporter option, ICL filter)                  |
| domain                        | `domain`                                                    |
| VICTORY                       | a gold star on the batch's Label Studio tasks               |
| ml_analysis_rating            | an annotation's rating (one row per Label Studio task)      |
| Aristotle database            | the plugin's own tables (`aris_*`, `alembic_version_aris`)  |
| Eidos export                  | in-context-learning examples                                |

`plugin.py` declares the contributions; `terms.py` holds the vocabulary, `conquests.py` the
store, `handlers.py` the result handlers, `victories.py` the VICTORY → gold star sync,
`examples.py` the exports, `servicer.py` the gRPC API and `routes.py` its HTTP routes.
"""
