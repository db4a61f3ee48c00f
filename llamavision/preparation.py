"""Image preparation: the one-image policy, local resolution and the downloads it owns.

An :class:`ImagePreparer` turns a request's images into what each provider can take: it
resolves local images (no network), applies the ``multi_image`` policy, and downloads remote
images only for the providers that cannot fetch URLs themselves, once per URL and call, with
its own HTTP clients (no credentials, every address checked; see :mod:`llamavision.downloads`).
Preparation runs before a provider's concurrency slot is taken: a slow download holds up no
one else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import httpx

from llamavision import downloads
from llamavision.endpoint import Endpoint, has_images
from llamavision.errors import ConfigurationError, ImageError
from llamavision.images import (
    ImageOptions,
    RemoteImage,
    ResolvedImage,
    compose_grid,
    load_image_bytes,
    resolve_image,
)
from llamavision.loops import LoopBoundClient
from llamavision.messages import ChatRequest, Image, Message, Part

T = TypeVar("T")
MultiImage = Literal["error", "latest", "grid"]
Prepare = Callable[[Endpoint], ChatRequest]
APrepare = Callable[[Endpoint], Awaitable[ChatRequest]]


class ImagePreparer:
    """Prepares the images of requests for each endpoint (see the module doc).

    Args:
        options: how images are validated, downscaled, encoded and downloaded.
        multi_image: several images in one conversation: ``"error"``, ``"latest"`` or
            ``"grid"``.

    Raises:
        ConfigurationError: ``multi_image`` is none of the three.

    """

    def __init__(self, options: ImageOptions | None = None, multi_image: str = "error") -> None:
        if multi_image not in ("error", "latest", "grid"):
            raise ConfigurationError(
                f"multi_image must be 'error', 'latest' or 'grid', not {multi_image!r}."
            )
        self.options = options or ImageOptions()
        self.multi_image = multi_image
        self._lock = threading.Lock()
        self._dl: httpx.Client | None = None
        self._adl = LoopBoundClient(lambda: downloads.async_http_client(self.options))

    # ----------------------------------------------------------------- sync

    def resolver(self, request: ChatRequest) -> Prepare:
        """Return a function giving each endpoint ``request`` with images it can take.

        Raises:
            ImageError: an image is unreadable, too large, or one of several under
                ``multi_image="error"`` (before anything is sent).

        """
        if not has_images(request):
            return lambda ep: dataclasses.replace(request, model=ep.model)
        local = self.local_images(request)
        fetched: dict[str, ResolvedImage] = {}

        def inline(image: Image) -> ResolvedImage:
            src = image.source
            if isinstance(src, RemoteImage):
                if src.url not in fetched:
                    fetched[src.url] = self.download(src.url)
                return fetched[src.url]
            return src  # type: ignore[no-any-return]

        if sum(len(m.images) for m in local) > 1:  # only "grid" leaves several
            local = self.apply_policy(local, [inline(i) for m in local for i in m.images])

        def for_endpoint(ep: Endpoint) -> ChatRequest:
            messages = local
            if not ep.codec.FETCHES_IMAGE_URLS:
                messages = tuple(_map_images(m, lambda i: Image(inline(i))) for m in local)
            return dataclasses.replace(request, messages=messages, model=ep.model)

        return for_endpoint

    def download(self, url: str) -> ResolvedImage:
        """Download and prepare the image at ``url`` (checked, bounded; see ``downloads``)."""
        if self._dl is None:
            with self._lock:
                if self._dl is None:
                    self._dl = downloads.http_client(self.options)
        data = downloads.download(self._dl, url, self.options)
        return load_image_bytes(data, self.options, origin=url)

    def close(self) -> None:
        """Close the sync download client, if one was made."""
        if self._dl is not None:
            self._dl.close()
            self._dl = None

    # ----------------------------------------------------------------- async

    async def aresolver(self, request: ChatRequest) -> APrepare:
        """Async form of :meth:`resolver` (decoding runs off the event loop)."""
        if not has_images(request):

            async def plain(ep: Endpoint) -> ChatRequest:
                return dataclasses.replace(request, model=ep.model)

            return plain
        local = await image_work(self.local_images, request)
        fetched: dict[str, ResolvedImage] = {}

        async def inline(image: Image) -> ResolvedImage:
            src = image.source
            if isinstance(src, RemoteImage):
                if src.url not in fetched:
                    fetched[src.url] = await self.adownload(src.url)
                return fetched[src.url]
            return src  # type: ignore[no-any-return]

        if sum(len(m.images) for m in local) > 1:  # only "grid" leaves several
            grid = [await inline(i) for m in local for i in m.images]
            local = await image_work(self.apply_policy, local, grid)

        async def for_endpoint(ep: Endpoint) -> ChatRequest:
            messages = local
            if not ep.codec.FETCHES_IMAGE_URLS:
                resolved = {id(i): Image(await inline(i)) for m in local for i in m.images}
                messages = tuple(_map_images(m, lambda i: resolved[id(i)]) for m in local)
            return dataclasses.replace(request, messages=messages, model=ep.model)

        return for_endpoint

    async def adownload(self, url: str) -> ResolvedImage:
        """Async form of :meth:`download`."""
        http = await self._adl.get()
        data = await downloads.adownload(http, url, self.options)
        return await image_work(load_image_bytes, data, self.options, origin=url)

    async def aclose(self) -> None:
        """Close the download clients, if any were made."""
        await self._adl.aclose()
        self.close()

    # ----------------------------------------------------------------- policy (no I/O)

    def local_images(self, request: ChatRequest) -> tuple[Message, ...]:
        """Resolve every image (no network), then apply the one-image policy.

        Leaves several images only for ``grid``, which the resolvers compose once remote
        images are downloaded.
        """
        opts = self.options
        messages = [
            dataclasses.replace(
                m,
                parts=tuple(
                    Image(resolve_image(p.source, opts)) if isinstance(p, Image) else p
                    for p in m.parts
                ),
            )
            if m.images
            else m
            for m in request.messages
        ]
        images = [i.source for m in messages for i in m.images]
        count = len({i.data if isinstance(i, ResolvedImage) else i.url for i in images})
        if count <= 1:  # no image, one image, or the same image several times: keep the last
            return self.apply_policy(tuple(messages), None)
        if self.multi_image == "error":
            raise ImageError(
                f"This conversation holds {count} images, but Llama 3.2 Vision is trained for "
                "one image per conversation. Send one image, or pass multi_image='latest' to "
                "keep only the last one (what a multi-turn agent wants), or multi_image='grid' "
                "to compose them into one labelled grid (for comparisons). Images from a "
                "retriever: retrieve one (LlamaIndex: similarity_top_k=1 and "
                "image_similarity_top_k=1; LangChain: k=1) or use multi_image='grid'."
            )
        if self.multi_image == "latest":
            return self.apply_policy(tuple(messages), None)
        return tuple(messages)

    def apply_policy(
        self, messages: tuple[Message, ...], images: list[ResolvedImage] | None
    ) -> tuple[Message, ...]:
        """Keep one image: the last (``latest``) or a grid of all (``grid``, given resolved)."""
        total = sum(len(m.images) for m in messages)
        if total <= 1:
            return messages
        keep = compose_grid(images, self.options) if images is not None else None
        seen, out = 0, []
        for m in messages:
            parts: list[Part] = []
            for p in m.parts:
                if isinstance(p, Image):
                    seen += 1
                    if keep is not None and seen == 1:
                        parts.append(Image(keep))
                    elif keep is None and seen == total:
                        parts.append(p)
                    continue
                parts.append(p)
            out.append(dataclasses.replace(m, parts=tuple(parts)))
        return tuple(out)


_IMAGE_WORKERS = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="llamavision-image")


async def image_work(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run CPU-bound image work (decode, resize, encode) off the event loop.

    One pool per process, as large as the CPU count: more decodes at once would not finish
    sooner, each only holds a decoded image in memory meanwhile.
    """
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_IMAGE_WORKERS, call)


def _map_images(message: Message, fn: Callable[[Image], Image]) -> Message:
    if not message.images:
        return message
    parts = tuple(fn(p) if isinstance(p, Image) else p for p in message.parts)
    return dataclasses.replace(message, parts=parts)
