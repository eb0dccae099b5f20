"""Old name of `nanomesh.sdk.client`, kept so that services written before 0.2
(``from nanomesh.client import ...``) keep running on upgraded peers: a bundle
already in a mesh's registry is not rebuilt by an upgrade. It is the very same
module object, not a copy. New code imports `nanomesh.sdk.client`."""

import sys

from nanomesh.sdk import client as _client

sys.modules[__name__] = _client
