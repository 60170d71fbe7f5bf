"""POST /v1/embeddings through the official `openai` client against a real local server: texts, image data URLs
and both mixed get exactly Model.encode_text / encode_image's vectors (float and base64 encodings), the model
name is echoed, usage counts the texts' tokens; inputs that are neither texts nor images get a 400 in OpenAI's
error shape."""
import base64

import cv2
import numpy as np
import pytest
from serve_testkit import index_folder, running, tiny_model, write_photos

pytest.importorskip("faiss", reason="faiss-cpu is not installed")
pytest.importorskip("uvicorn", reason="uvicorn is not installed")
openai = pytest.importorskip("openai", reason="the openai client is not installed")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from ernievil2.serve.app import create_app
    from ernievil2.serve.service import ServeSettings
    root = tmp_path_factory.mktemp("openai")
    model = tiny_model()
    write_photos(root / "photos", ["a.png", "b.png"])
    index_folder(model, root / "photos", ["a.png", "b.png"], root / "index", root / "g.npz")
    app = create_app(model, str(root / "index"), ServeSettings(reload_seconds=0, max_embedding_inputs=8,
                                                              max_upload_bytes=20_000))
    with running(app) as url:
        yield model, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60), url


def png(seed, h=30, w=40):
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".png", rgb)[1].tobytes()


def data_url(data, kind="png"):
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def vectors(response):
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], np.float32)


def test_texts_get_the_models_vectors(served):
    model, client, _ = served
    texts = ["红色的汽车停在路边", "一只猫", "a dog on the grass"]
    response = client.embeddings.create(model="ernie-vil-2.0-tiny", input=texts)  # base64 on the wire
    assert response.model == "ernie-vil-2.0-tiny" and response.object == "list"
    assert np.array_equal(vectors(response), model.encode_text(texts))
    tokens = sum(len(model.tokenizer.encode(t, model.max_text_len)) for t in texts)
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    as_floats = client.embeddings.create(model="m", input=texts, encoding_format="float")
    assert np.array_equal(vectors(as_floats), model.encode_text(texts))
    single = client.embeddings.create(model="m", input="一只猫")
    assert np.array_equal(vectors(single), model.encode_text(["一只猫"]))


def test_image_data_urls_and_mixed_inputs(served):
    model, client, _ = served
    images = [png(1), cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(png(2), np.uint8), 1))[1].tobytes()]
    response = client.embeddings.create(model="m", input=[data_url(images[0]), "一只猫", data_url(images[1], "jpeg")])
    got = vectors(response)
    assert np.array_equal(got[[0, 2]], model.encode_image(images))
    assert np.array_equal(got[1], model.encode_text(["一只猫"])[0])
    assert response.usage.prompt_tokens == len(model.tokenizer.encode("一只猫", model.max_text_len))


@pytest.mark.parametrize("bad_input,message", [
    ("", "input[0]: the text is empty"),
    ([], "non-empty"),
    ([1, 2, 3], "token ids are not accepted"),
    ([[1, 2], [3]], "token ids are not accepted"),
    (["ok", None], "input[1]: NoneType are not accepted"),
    (["data:text/plain;base64,aGVsbG8="], "not a base64 image"),
    ([data_url(b"plain text, not an image")], "input[0]: not a usable image"),
    ([data_url(b"\x89PNG" + b"0" * 30_000)], "over the limit of 20000 bytes"),
    (["t"] * 9, "over the limit of 8 per request"),
])
def test_bad_inputs_get_an_openai_style_400(served, bad_input, message):
    _, client, _ = served
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model="m", input=bad_input)
    assert caught.value.status_code in (400, 413)
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == "input" and message in error["message"]


def test_bad_requests_outside_the_input(served):
    import httpx
    _, client, url = served
    with pytest.raises(openai.BadRequestError, match="encoding_format must be float or base64"):
        client.embeddings.create(model="m", input="猫", encoding_format="int8")
    with pytest.raises(openai.BadRequestError, match="embeddings have 32 dimensions"):
        client.embeddings.create(model="m", input="猫", dimensions=16)
    response = httpx.post(f"{url}/v1/embeddings", content=b"{oops", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["message"] == "the request body is not JSON"
    assert httpx.get(f"{url}/healthz").status_code == 200
