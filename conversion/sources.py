"""Where a pretrained source lives: a preset name, a URL, a hub repository or a local path.

`resolve` turns what a user passes to `from_pretrained` into a local file or folder, fetching
it first when needed:

- a preset name (`keras_deit.presets`): its original `.pth` from dl.fbaipublicfiles.com
  (`preset_source="original"`, the default), or its hub repository (`"hub"`);
- an `http(s)://` or `file://` URL of a checkpoint file: downloaded once into the cache
  (`$KERAS_DEIT_CACHE`, else `~/.cache/keras_deit`), in a folder named by a hash of the URL,
  written atomically, its sha256 checked against the hash prefix the file name carries
  (`name-1a2b3c4d.pth`, as torch.hub does);
- `owner/name`: a Hugging Face Hub repository, fetched with `huggingface_hub` (optional);
- a local folder or file: used as is.
"""

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request

from keras_deit import atomic
from keras_deit.conversion.progress import Progress
from keras_deit.conversion.readers import CheckpointError

CACHE_ENV = "KERAS_DEIT_CACHE"
# torch.hub's convention: `name-<first hex digits of sha256>.ext`.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHUNK = 1 << 20
# A server that stops sending for this long is a broken download, not a slow one.
_TIMEOUT_S = 60
# Downloads smaller than this get no progress bar.
_PROGRESS_MIN_BYTES = 8 << 20


@dataclasses.dataclass
class ResolvedSource:
    """A source made local.

    Attributes:
        path: a local checkpoint file or folder.
        preset: the preset name the source was given as, or the one a URL belongs to.
        origin: the URL or hub id it was fetched from (None for local paths).
    """

    path: str
    preset: str = None
    origin: str = None

    @property
    def is_folder(self):
        """Whether `path` is a folder (HF or timm hub layout) rather than one file."""
        return os.path.isdir(self.path)


def cache_dir(path=None):
    """The download cache: `path`, else `$KERAS_DEIT_CACHE`, else `~/.cache/keras_deit`."""
    if path is None:
        path = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "keras_deit")
    return os.fspath(path)


def is_url(source):
    """Whether `source` is a URL we can download (http, https or file)."""
    scheme = source.split("://", 1)[0].lower() if isinstance(source, str) else None
    return scheme in ("http", "https", "file") and "://" in source


def looks_like_repo_id(source):
    """Whether `source` reads as a hub repository id (`owner/name`)."""
    return isinstance(source, str) and bool(_REPO_ID.match(source)) and not source.endswith(
        (".pth", ".pt", ".bin", ".safetensors", ".h5")
    )


def expected_sha256_prefix(url):
    """The hash prefix a preset records for `url`, else the one its file name carries."""
    from keras_deit import presets

    for entry in presets.PRESETS.values():
        if entry["url"] == url and entry["sha256_prefix"]:
            return entry["sha256_prefix"]
    match = _HASH_IN_NAME.search(_file_name(url))
    return match[1] if match else None


def _file_name(url):
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not name:
        raise ValueError(f"The URL {url!r} names no file: pass the URL of a checkpoint file.")
    return name


def cache_path(url, cache=None):
    """Where `url`'s file is kept: `<cache>/<first 16 hex digits of sha256(url)>/<file name>`.

    Keyed by the whole URL, so two URLs that end in the same file name never share a file.
    """
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return os.path.join(cache_dir(cache), key, _file_name(url))


def _make_folder(folder):
    """Creates the cache folder, or says in one line why it cannot be one."""
    for parent in _parents(folder):
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise CheckpointError(
                f"The download cache {folder} cannot be created: {parent} is a file, not a "
                f"folder. Point ${CACHE_ENV} (or cache_dir) at a folder, or move that file."
            )
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"The download cache {folder} cannot be created ({e.strerror or e}): point "
            f"${CACHE_ENV} (or cache_dir) at a writable folder."
        ) from None


def _parents(folder):
    folder = os.path.abspath(folder)
    while True:
        yield folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


# What a broken connection raises while the body streams (IncompleteRead: the server closed
# before the length it promised; ConnectionError: a reset; OSError: timeouts and the rest).
_STREAM_ERRORS = (http.client.HTTPException, ConnectionError, TimeoutError, OSError)


def download(url, cache=None, sha256_prefix=None, progress=True, opener=None):
    """The local path of `url`'s file, downloading it into the cache if it is not there yet.

    The cache is keyed by the URL (`cache_path`). The file is streamed into a hidden
    temporary file beside its destination and moved into place only after a clean end of the
    stream, with as many bytes as the server announced, and, when a hash prefix is known,
    verified; a failed or interrupted download leaves nothing behind (see
    `keras_deit.atomic`). A file already in the cache is reused after the same hash check (it
    may have been placed there by hand, as the offline error message suggests).

    Args:
        url: http(s) or file URL of a checkpoint.
        cache: the cache folder (see `cache_dir`).
        sha256_prefix: expected start of the file's sha256; by default the preset's, or the
            hex suffix of the file name.
        progress: show a progress bar on stderr for large files.
        opener: `urllib.request.urlopen` or a stand-in (tests).

    Raises:
        CheckpointError: the download failed or stopped early (the message names the URL, and
            where to put a file fetched by hand), the hash does not match, or the cache
            folder cannot be made.
    """
    dest = cache_path(url, cache)
    if sha256_prefix is None:
        sha256_prefix = expected_sha256_prefix(url)
    if os.path.isfile(dest):
        # Reused, but checked again: the file may have been put there by hand.
        if sha256_prefix and not _file_sha256(dest).startswith(sha256_prefix.lower()):
            raise CheckpointError(
                f"The cached file {dest} does not have the sha256 expected for {url} (it should "
                f"start with {sha256_prefix}): it is incomplete or another file. Delete it and "
                "try again."
            )
        return dest
    _make_folder(os.path.dirname(dest))
    opener = opener or functools.partial(urllib.request.urlopen, timeout=_TIMEOUT_S)
    by_hand = (f"fetch that URL elsewhere and put the file at {dest} (set ${CACHE_ENV} to use "
               "another folder), or pass the local file's path instead")
    try:
        _fetch(url, dest, sha256_prefix, progress, opener, by_hand)
    except BaseException:
        with contextlib.suppress(OSError):  # the URL's folder, unless something else is in it
            os.rmdir(os.path.dirname(dest))
        raise
    return dest


def _fetch(url, dest, sha256_prefix, progress, opener, by_hand):
    """Streams `url` into `dest` through a temporary file; see `download`."""
    digest = hashlib.sha256()
    with atomic.temporary_path(dest, ".part") as tmp:
        try:
            response = opener(url)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise CheckpointError(f"Could not download {url} ({reason}). Without network "
                                  f"access, {by_hand}.") from None
        done, total = 0, None
        try:
            with response, open(tmp, "wb") as out:
                total = _content_length(response)
                bar = (Progress(f"Downloading {os.path.basename(dest)}", total)
                       if progress and (total or 0) >= _PROGRESS_MIN_BYTES else None)
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if bar:
                        bar.update(done)
                if bar:
                    bar.close()
        except _STREAM_ERRORS as e:
            what = type(e).__name__ if isinstance(e, http.client.IncompleteRead) else (
                getattr(e, "strerror", None) or str(e) or type(e).__name__)
            raise CheckpointError(
                f"The download of {url} broke off after {done} bytes ({what}); nothing was "
                f"kept. Try again, or {by_hand}."
            ) from None
        if total is not None and done != total:
            raise CheckpointError(
                f"The download of {url} stopped after {done} of {total} bytes. Try again, "
                f"or {by_hand}."
            )
        actual = digest.hexdigest()
        if sha256_prefix and not actual.startswith(sha256_prefix.lower()):
            raise CheckpointError(
                f"The file downloaded from {url} has sha256 {actual}, which does not start with "
                f"the expected {sha256_prefix}: it is corrupt or not the published file. "
                "Download it again."
            )
        os.replace(tmp, dest)


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_length(response):
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# Weight files to ask the hub for, in order of preference: one call per kind, stopping at the
# first that the repository has, so a repository with several formats costs one download.
_HUB_PATTERNS = (["*.json", "*.safetensors"], ["*.json", "pytorch_model.bin"], ["*.json", "*.h5"])


def hub_download(repo_id, revision=None):
    """A local snapshot folder of hub repository `repo_id` (config and one weights format)."""
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(
            f"Loading the hub repository {repo_id!r} needs huggingface_hub: "
            "`pip install huggingface_hub` (or keras-deit[hub]), or download the repository "
            "yourself and pass its folder."
        ) from None
    folder = None
    for patterns in _HUB_PATTERNS:
        try:
            folder = huggingface_hub.snapshot_download(
                repo_id=repo_id, revision=revision, allow_patterns=patterns
            )
        except Exception as e:  # huggingface_hub raises many types (HTTP, offline, not found)
            raise CheckpointError(
                f"Could not fetch {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: "
                f"{e}). Check the repository id and your network, or download it with "
                f"`hf download {repo_id} --local-dir DIR` and pass DIR."
            ) from None
        if any(n.endswith((".safetensors", ".bin", ".h5", ".pth")) for n in os.listdir(folder)):
            return folder
    raise CheckpointError(
        f"The hub repository {repo_id!r} holds no weights file (.safetensors, pytorch_model.bin "
        "or .h5): it is not a model repository."
    )


def resolve(source, preset_source="original", cache=None, progress=True, revision=None):
    """Makes `source` local; see the module docstring for what it may be.

    Args:
        source: preset name, URL, hub id, or local folder / file.
        preset_source: for a preset, "original" (the `.pth` release) or "hub" (the transformers
            repository for DeiT, the timm repository for DeiT III).
        cache: download cache folder (see `cache_dir`).
        progress: show a progress bar for large downloads.
        revision: hub revision (branch, tag or commit) for hub ids.

    Returns:
        A `ResolvedSource`.
    """
    from keras_deit import presets

    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise ValueError(
            "A pretrained source must be a preset name, a URL, a hub id or a local path. "
            f"Received: source of type {type(source).__name__}"
        )
    if os.path.exists(source):
        return ResolvedSource(path=source)
    if presets.is_preset(source):
        entry = presets.get_preset(source)
        if preset_source == "original":
            path = download(entry["url"], cache, entry["sha256_prefix"], progress)
            return ResolvedSource(path=path, preset=source, origin=entry["url"])
        if preset_source == "hub":
            repo = entry["hf_repo"] or entry["timm_hub_id"]
            return ResolvedSource(path=hub_download(repo, revision), preset=source, origin=repo)
        raise ValueError(
            "`preset_source` must be 'original' or 'hub'. "
            f"Received: preset_source={preset_source!r}"
        )
    if is_url(source):
        preset = next((n for n, p in presets.PRESETS.items() if p["url"] == source), None)
        return ResolvedSource(path=download(source, cache, progress=progress), preset=preset,
                              origin=source)
    if looks_like_repo_id(source):
        return ResolvedSource(path=hub_download(source, revision), origin=source)
    close = difflib.get_close_matches(source, presets.PRESETS, n=3, cutoff=0.6)
    hint = f" Did you mean the preset {', '.join(repr(c) for c in close)}?" if close else ""
    raise FileNotFoundError(
        f"Unknown pretrained source {source!r}: no such file or folder, and not a preset name, "
        f"URL or hub id (owner/name).{hint} Presets: keras_deit.presets.list_presets()."
    )
