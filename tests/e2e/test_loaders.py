"""The captions of ``llamavision caption`` loaded into LangChain and LlamaIndex indexes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from langchain_core.documents import Document
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageDocument

from langchain_llamavision import CaptionLoader
from llamaindex_llamavision import CaptionReader, LlamaVisionMultiModal
from llamavision.cli import main
from llamavision.emulator import Emulator
from tests.colour_embedding import ColourEmbedding
from tests.e2e.support import copy_samples

SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


@pytest.fixture
def captions(emulator: Emulator, tmp_path: Path) -> Path:
    """The output of ``llamavision caption`` over the samples, plus an error row and a torn line."""
    copy_samples(tmp_path / "images")
    out = tmp_path / "captions.jsonl"
    code = main(
        ["caption", str(tmp_path / "images"), "--out", str(out)], io.StringIO(), io.StringIO()
    )
    assert code == 0
    with out.open("a") as f:
        f.write(json.dumps({"image_path": "x.jpg", "caption": None, "error": "broken"}) + "\n")
        f.write('{"image_path": "y.jpg", "capt')
    return out


def test_caption_loader_yields_documents_lazily(captions: Path) -> None:
    loader = CaptionLoader(captions)
    docs = list(loader.lazy_load())
    assert len(docs) == 4 and all(isinstance(d, Document) for d in docs)
    assert loader.skipped == 1  # the error row (the torn line is not a record)
    by_name = {Path(d.metadata["image_path"]).name: d for d in docs}
    red = by_name["red-square.png"]
    assert "mostly white and red" in red.page_content
    assert {"sha256", "provider", "model", "cost_usd"} <= set(red.metadata)
    assert None not in red.metadata.values()  # vector stores refuse empty values
    assert loader.load() == docs


def test_caption_reader_builds_a_multimodal_index(captions: Path) -> None:
    reader = CaptionReader()
    documents = reader.load_data(captions)
    assert len(documents) == 4 and reader.skipped == 1
    assert all(isinstance(d, ImageDocument) and d.image_path for d in documents)
    assert "sha256" not in documents[0].get_content(metadata_mode="embed")  # clean embeddings
    embedding = ColourEmbedding()
    index = MultiModalVectorStoreIndex.from_documents(
        documents, embed_model=embedding, image_embed_model=embedding
    )
    hits = index.as_retriever(similarity_top_k=1, image_similarity_top_k=1).retrieve("blue")
    assert any(Path(str(getattr(h.node, "image_path", ""))).name == "blue-circle.jpg" for h in hits)


def test_query_engines_give_the_model_the_captions_as_context(
    captions: Path, emulator: Emulator
) -> None:
    documents = CaptionReader(documents="both").load_data(captions)
    texts = [d for d in documents if not isinstance(d, ImageDocument)]
    images = [d for d in documents if isinstance(d, ImageDocument)]
    assert len(texts) == len(images) == 4 and not any(d.text for d in images)
    assert all(Path(d.metadata["image_path"]).is_file() for d in texts)  # where the image is now
    embedding = ColourEmbedding()
    index = MultiModalVectorStoreIndex.from_documents(
        documents, embed_model=embedding, image_embed_model=embedding
    )
    engine = index.as_query_engine(  # a multimodal engine, in every supported llama-index
        llm=LlamaVisionMultiModal(provider="aigateway", accept_license=True),
        similarity_top_k=1,
        image_similarity_top_k=1,
    )
    emulator.requests.clear()
    response = engine.query("What is in the blue picture?")
    (sent,) = emulator.requests
    context = next(m["text"] for m in sent.messages if "Context information" in m["text"])
    assert "mostly white and blue" in context  # the blue image's caption, as context
    assert len(sent.images) == 1  # and one picture: the blue one, by its colour
    assert "800x600 JPEG image, mostly white and blue" in str(response)
    with pytest.raises(ValueError, match="'image', 'text' or 'both'"):
        CaptionReader(documents="images")  # type: ignore[arg-type]
    only_text = CaptionReader(documents="text").load_data(captions)
    assert [d.text for d in only_text] == [d.text for d in texts]


def test_a_missing_captions_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="llamavision caption"):
        list(CaptionLoader(tmp_path / "none.jsonl").lazy_load())
    with pytest.raises(FileNotFoundError, match="llamavision caption"):
        CaptionReader().load_data(tmp_path / "none.jsonl")


def test_both_paths_of_one_photo_load_with_its_caption(emulator: Emulator, tmp_path: Path) -> None:
    copy_samples(tmp_path / "images")
    shutil.copy(tmp_path / "images" / "sunset.jpg", tmp_path / "images" / "sunset-2.jpg")
    out = tmp_path / "captions.jsonl"
    main(["caption", str(tmp_path / "images"), "--out", str(out)], io.StringIO(), io.StringIO())
    assert emulator.counters["received"] == 4  # captioned once
    docs = {Path(d.metadata["image_path"]).name: d for d in CaptionLoader(out).lazy_load()}
    nodes = {Path(str(n.image_path)).name: n for n in CaptionReader().load_data(out)}
    for loaded in (docs, nodes):
        assert len(loaded) == 5  # a document for every path, each with its file
    assert docs["sunset.jpg"].page_content == docs["sunset-2.jpg"].page_content
    assert nodes["sunset.jpg"].text == nodes["sunset-2.jpg"].text
    assert Path(docs["sunset-2.jpg"].metadata["image_path"]).is_file()
