"""Image RAG as the notebooks build it: captions into an on-disk Qdrant index.

The same helpers the notebooks call (``caption_store`` for LangChain, ``caption_index`` for
LlamaIndex), over images generated here and captioned by the emulator, which describes each
image's dominant colours: a question naming a colour must retrieve that image first. With
each kind of embeddings the notebooks use: WordLlama's (offline) and Workers AI's (with keys;
here the emulator's bge route, whose vectors are hashed words, stands in for Cloudflare).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage
from llama_index.core.query_engine import SimpleMultiModalQueryEngine
from PIL import Image, ImageDraw

from langchain_llamavision import (
    ChatLlamaVision,
    WordLlamaEmbeddings,
    WorkersAIEmbeddings,
    caption_store,
    image_question,
)
from llamaindex_llamavision import (
    CaptionImages,
    LlamaVisionMultiModal,
    WordLlamaEmbedding,
    WorkersAIEmbedding,
    caption_index,
)
from llamavision import LlamaVisionClient
from llamavision.captions import caption_images
from llamavision.emulator import Emulator
from llamavision.errors import ConfigurationError

LANGCHAIN = {"wordllama": WordLlamaEmbeddings, "workers_ai": WorkersAIEmbeddings}
LLAMAINDEX = {"wordllama": WordLlamaEmbedding, "workers_ai": WorkersAIEmbedding}

COLOURS = {  # what the emulator names, and a shape of another colour on each (under 15 %)
    "red": ((200, 30, 30), (245, 245, 245)),
    "green": ((30, 160, 60), (230, 210, 40)),
    "blue": ((30, 60, 200), (240, 140, 30)),
    "yellow": ((230, 210, 40), (130, 40, 160)),
    "orange": ((240, 140, 30), (40, 200, 210)),
    "purple": ((130, 40, 160), (15, 15, 15)),
    "cyan": ((40, 200, 210), (200, 30, 30)),
    "white": ((245, 245, 245), (30, 60, 200)),
    "black": ((15, 15, 15), (30, 160, 60)),
    "grey": ((128, 128, 128), (245, 245, 245)),
}


def make_images(folder: Path, names: list[str]) -> list[Path]:
    """One image per colour name: that colour, with a small shape of another."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, name in enumerate(names):
        ground, mark = COLOURS[name]
        size = (320 + 16 * number, 240)
        image = Image.new("RGB", size, ground)
        draw = ImageDraw.Draw(image)
        box = (20, 20, 90, 90)
        (draw.ellipse if number % 2 else draw.rectangle)(box, fill=mark)
        path = folder / f"{name}-{'circle' if number % 2 else 'square'}.png"
        image.save(path)
        paths.append(path)
    return paths


def caption(paths: list[Path], out: Path) -> None:
    async def run() -> None:
        async with LlamaVisionClient(accept_license=True) as client:
            summary = await caption_images(paths, out, client)
        summary.check()

    asyncio.run(run())


def question(name: str) -> str:
    return f"Which picture is mostly {name}?"


class CountingEmbeddings(WordLlamaEmbeddings):
    """WordLlama, counting the documents it embeds."""

    embedded: int = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.embedded += len(texts)
        return super().embed_documents(texts)


class CountingEmbedding(WordLlamaEmbedding):
    """WordLlama for LlamaIndex, counting the texts it embeds."""

    embedded: int = 0

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        self.embedded += len(texts)
        return super()._get_text_embeddings(texts)


@pytest.fixture
def captioned(emulator: Emulator, tmp_path: Path) -> Path:
    out = tmp_path / "images" / "captions.jsonl"
    caption(make_images(tmp_path / "images", list(COLOURS)), out)
    return out


@pytest.mark.parametrize("kind", LANGCHAIN)
def test_langchain_retrieves_the_image_a_question_names(
    kind: str, captioned: Path, emulator: Emulator, tmp_path: Path
) -> None:
    store = caption_store(captioned, tmp_path / "index", embedding=LANGCHAIN[kind]())
    retriever = store.as_retriever(search_kwargs={"k": 1})
    right = [
        Path(retriever.invoke(question(name))[0].metadata["image_path"]).name.startswith(name)
        for name in COLOURS
    ]
    assert sum(right) >= 0.9 * len(COLOURS), dict(zip(COLOURS, right, strict=True))


@pytest.mark.parametrize("kind", LLAMAINDEX)
def test_llamaindex_retrieves_the_image_a_question_names(
    kind: str, captioned: Path, emulator: Emulator, tmp_path: Path
) -> None:
    index = caption_index(captioned, tmp_path / "index", embed_model=LLAMAINDEX[kind]())
    retriever = index.as_retriever(similarity_top_k=1)
    right = [
        Path(retriever.retrieve(question(name))[0].node.metadata["image_path"]).name.startswith(
            name
        )
        for name in COLOURS
    ]
    assert sum(right) >= 0.9 * len(COLOURS), dict(zip(COLOURS, right, strict=True))


def test_langchain_index_grows_with_the_collection(emulator: Emulator, tmp_path: Path) -> None:
    names = list(COLOURS)
    out = tmp_path / "images" / "captions.jsonl"
    paths = make_images(tmp_path / "images", names)
    caption(paths[:6], out)
    embeddings = CountingEmbeddings()
    store = caption_store(out, tmp_path / "index", embedding=embeddings)
    assert embeddings.embedded == 6
    caption(paths, out)  # four more images
    store = caption_store(out, tmp_path / "index", embedding=embeddings)
    assert embeddings.embedded == 6 + 4  # only the new captions
    store.client.close()  # from the disk, in a new client: nothing to embed, all there
    again = caption_store(out, tmp_path / "index", embedding=embeddings)
    assert embeddings.embedded == 10 and again.client.count("captions").count == 10


def test_llamaindex_index_grows_with_the_collection(emulator: Emulator, tmp_path: Path) -> None:
    names = list(COLOURS)
    out = tmp_path / "images" / "captions.jsonl"
    paths = make_images(tmp_path / "images", names)
    caption(paths[:6], out)
    embed_model = CountingEmbedding()
    caption_index(out, tmp_path / "index", embed_model=embed_model)
    assert embed_model.embedded == 6
    caption(paths, out)
    index = caption_index(out, tmp_path / "index", embed_model=embed_model)
    assert embed_model.embedded == 6 + 4
    index.vector_store.client.close()
    index = caption_index(out, tmp_path / "index", embed_model=embed_model)
    assert embed_model.embedded == 10
    assert len(index.as_retriever(similarity_top_k=20).retrieve("a picture")) == 10


def test_a_langchain_chain_shows_the_model_the_retrieved_image(
    captioned: Path, emulator: Emulator, tmp_path: Path
) -> None:
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    retriever = caption_store(captioned, tmp_path / "index").as_retriever(search_kwargs={"k": 1})
    chain = (
        {"documents": retriever, "question": RunnablePassthrough()}
        | RunnableLambda(lambda x: image_question(x["question"], x["documents"]))
        | ChatLlamaVision(accept_license=True)
    )
    emulator.requests.clear()
    answer = "".join(chunk.text for chunk in chain.stream(question("purple")))
    (sent,) = emulator.requests
    assert len(sent.images) == 1 and "mostly purple" in answer  # the image, as the model saw it
    assert "Image 1 caption:" in sent.messages[-1]["text"]  # and its caption as context
    two = image_question("Compare them.", retriever.invoke("purple") * 2)
    assert isinstance(two[0], HumanMessage)
    latest = ChatLlamaVision(accept_license=True, multi_image="latest").invoke(two)
    assert "mostly purple" in latest.text


def test_a_llamaindex_engine_shows_the_model_the_retrieved_image(
    captioned: Path, emulator: Emulator, tmp_path: Path
) -> None:
    index = caption_index(captioned, tmp_path / "index")
    engine = SimpleMultiModalQueryEngine(  # in every supported llama-index (see the README)
        retriever=index.as_retriever(similarity_top_k=1),
        multi_modal_llm=LlamaVisionMultiModal(accept_license=True),
        node_postprocessors=[CaptionImages()],
    )
    emulator.requests.clear()
    response = engine.query(question("cyan"))
    (sent,) = emulator.requests
    context = next(m["text"] for m in sent.messages if "Context information" in m["text"])
    assert "mostly cyan" in context and len(sent.images) == 1
    assert "mostly cyan" in str(response).split("You asked")[0]  # the model saw the cyan one


def test_workers_ai_embeds_only_new_captions_in_batches(emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "images" / "captions.jsonl"
    paths = make_images(tmp_path / "images", list(COLOURS))
    caption(paths[:6], out)
    before = emulator.counters["requests"]
    caption_store(out, tmp_path / "lc", embedding=WorkersAIEmbeddings())
    caption_index(out, tmp_path / "li", embed_model=WorkersAIEmbedding())
    assert emulator.counters["embedded"] == 6 + 6  # no probe text: the model's size is known
    assert emulator.counters["requests"] - before == 2  # one batch each
    caption(paths, out)
    caption_store(out, tmp_path / "lc", embedding=WorkersAIEmbeddings())
    caption_index(out, tmp_path / "li", embed_model=WorkersAIEmbedding())
    assert emulator.counters["embedded"] == 12 + 4 + 4


def test_an_index_refuses_embeddings_of_another_size(
    captioned: Path, emulator: Emulator, tmp_path: Path
) -> None:
    caption_store(captioned, tmp_path / "lc")  # WordLlama: 256
    with pytest.raises(ConfigurationError, match=r"256-dimension vectors.*make 768"):
        caption_store(captioned, tmp_path / "lc", embedding=WorkersAIEmbeddings())
    caption_index(captioned, tmp_path / "li")
    with pytest.raises(ConfigurationError, match=r"256-dimension vectors.*make 384"):
        small = WorkersAIEmbedding(model_name="@cf/baai/bge-small-en-v1.5")
        caption_index(captioned, tmp_path / "li", embed_model=small)
