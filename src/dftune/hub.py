"""Publishing a submission folder on the Hugging Face Hub (``export --push-to-hub REPO``).

Everything goes through ``huggingface_hub``: the token is the one it finds (``HF_TOKEN``, or the file
``hf auth login`` / ``huggingface-cli login`` wrote), the repository is made with ``create_repo(exist_ok=True)``
and the folder sent as one commit by ``upload_folder`` (a commit lands whole or not at all, so the Hub never
holds half a folder). :func:`ready` runs before the export writes anything: offline (``HF_HUB_OFFLINE``) or
without a token the push is refused in one line and nothing is written, here or there.

The model card is the folder's ``README.md``: :func:`model_card` lays the Hub's metadata block (library,
pipeline tag, tags, the base model when it is a hub id) and what this model is (its threshold and where it
came from, its labels, its face crops) over the submission README the export copies.
"""

from __future__ import annotations

import os
import re

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class HubError(RuntimeError):
    """A push that cannot or did not happen; the message is one line that says why and what to do."""


def offline() -> bool:
    """Whether huggingface_hub is told to stay offline (``HF_HUB_OFFLINE``, read as it reads it)."""
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    if callable(check):  # newer huggingface_hub reads the environment each time
        return bool(check())
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def ready(repo: str, token: str | None = None) -> str:
    """The token a push to ``repo`` will use; :class:`HubError` (before any file is written) when the repo id is
    malformed, huggingface_hub is offline or no token is found."""
    if not REPO_ID.match(repo or ""):
        raise HubError(f"--push-to-hub {repo!r}: not a Hub repository id (NAME or USER/NAME)")
    if offline():
        raise HubError(f"--push-to-hub {repo}: HF_HUB_OFFLINE is set, so nothing can reach the Hub; nothing was "
                       f"written (unset it, or export without --push-to-hub and upload the folder later)")
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError(f"--push-to-hub {repo}: no Hugging Face token (set HF_TOKEN or run `hf auth login`); nothing "
                       f"was written")
    return token


def push(folder: str | os.PathLike, repo: str, token: str, private: bool = False,
         message: str = "dftune export") -> str:
    """Create ``repo`` (kept when it exists) and upload ``folder`` as one commit; return the commit's URL.
    A failure is a :class:`HubError` naming the repo and saying the local folder is complete."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", commit_message=message)
    except Exception as e:  # network, auth, quota: one line; the folder here is whole either way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"--push-to-hub {repo}: the upload failed ({first}); {folder} is complete, nothing was "
                       f"committed to the Hub: run the export again with --push-to-hub once it can be reached") \
            from None
    return str(getattr(info, "commit_url", None) or info)
