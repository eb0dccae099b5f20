"""Old name of `nanomesh.sdk.service`, kept so that services written before 0.2
(``from nanomesh.service import ...``) keep running on upgraded peers: a bundle
already in a mesh's registry is not rebuilt by an upgrade. It is the very same
module object, not a copy. New code imports `nanomesh.sdk.service`."""

import sys

from nanomesh.sdk import service as _service

sys.modules[__name__] = _service
