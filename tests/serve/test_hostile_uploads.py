"""Hostile and broken image uploads to `POST /search` are 400s naming the problem, and the service keeps
answering (some of these files used to be a 500 -- Pillow's DecompressionBombError -- or to kill the process:
OpenCV's JPEG 2000 reader)."""
import os
import sys

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"))
import crafted_images as crafted
from test_service import service  # noqa: F401 - the module's tiny service, reused


def hostile_uploads():
    ok, jp2 = cv2.imencode(".jp2", np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert ok
    jp2 = jp2.tobytes()
    return {
        "gif-far-corner.gif": crafted.gif(screen=(4, 4), frames=((65535, 65535, 1, 1),)),
        "gif-outside-screen.gif": crafted.gif(screen=(1, 1), frames=((0, 0, 13000, 13000),),
                                              lzw=b"\x02\x01\x2c\x00", transparent=True),
        "gif-zero-frame.gif": crafted.gif(screen=(4, 4), frames=((0, 0, 0, 0),)),
        "jp2-small-ihdr.jp2": crafted.jp2_patched(jp2, ihdr_size=(5, 4)),
        "jp2-truncated.jp2": jp2[:120],
        "tiff-duplicate-tags.tif": crafted.tiff_duplicate_size_tags(small=(4, 4), large=(20000, 20000)),
        "webp-canvas.webp": crafted.webp_vp8x((4, 4), (12000, 9000)),
    }


@pytest.mark.parametrize("name", list(hostile_uploads()))
def test_a_hostile_upload_is_a_400_and_the_service_keeps_answering(service, name):  # noqa: F811
    client = service[0]
    response = client.post("/search", files={"image": (name, hostile_uploads()[name], "application/octet-stream")})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("not a usable image: ")
    assert client.get("/healthz").status_code == 200
