"""Drops a copy request on a queue with the official Python client (azure-storage-queue),
base64-encoded as its TextBase64EncodePolicy does: what a user of the Python SDK sends by
default in many samples. Used by tests/copy_host.rs.

usage: send_request.py QUEUE_ENDPOINT QUEUE_NAME CA_PEM REQUEST_JSON
The bearer token comes from KC_TEST_TOKEN (an emulator token for https://storage.azure.com).
"""

import os
import sys
import time

from azure.core.credentials import AccessToken
from azure.storage.queue import QueueClient, TextBase64EncodePolicy


class FixedToken:
    """A TokenCredential handing out the one token the test minted."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken(os.environ["KC_TEST_TOKEN"], int(time.time()) + 3600)


def main():
    endpoint, queue, ca_pem, request = sys.argv[1:5]
    client = QueueClient(
        account_url=endpoint,
        queue_name=queue,
        credential=FixedToken(),
        message_encode_policy=TextBase64EncodePolicy(),
        connection_verify=ca_pem,
        # The pinned Azurite knows service versions up to the one the Rust SDK sends
        # (azure_storage_queue 1.1: 2026-04-06); this client defaults to a newer one.
        api_version="2026-04-06",
    )
    client.send_message(request)
    print("sent")


if __name__ == "__main__":
    main()
