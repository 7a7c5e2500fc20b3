"""The Label Studio webhook events we subscribe to and the header that carries our secret.

Its own module because both ends need them: projects.py registers the webhook on each Label
Studio project, webhook.py handles what arrives; neither imports the other.
"""

SECRET_HEADER = "X-Loomstack-Webhook-Secret"
UPSERT_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
DELETE_EVENTS = ("ANNOTATIONS_DELETED",)
EVENTS = (*UPSERT_EVENTS, *DELETE_EVENTS)
