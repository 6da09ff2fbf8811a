"""Local arguments expanded into Sources: files, directories, globs, --match, read limits."""

from __future__ import annotations

import os
import re

import pytest

from function import files
from function.errors import FileUnreadable, TooLarge

IMAGES = re.compile(files.IMAGE_FILES)
LIMIT = 1000


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """photos/ with images, a non-image, hidden files and folders, a subfolder; cwd = its parent."""
    for name in ["b.png", "a.JPG", "notes.txt", ".hidden.png", "sub/c.png", "sub/.git/d.png",
                 ".cache/e.png", "sub/deeper/f.webp"]:
        path = tmp_path / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def names(arg, recursive=False, match=IMAGES):
    return [source.name for source in files.sources(arg, recursive, match, LIMIT)]


def test_a_directory_gives_its_own_images_in_name_order(photos):
    assert names("photos") == ["photos/a.JPG", "photos/b.png"]
    assert names("photos/") == ["photos/a.JPG", "photos/b.png"]  # paths keep the prefix as given


def test_recursive_walks_subdirectories_but_not_hidden_ones(photos):
    assert names("photos", recursive=True) == [
        "photos/a.JPG", "photos/b.png", "photos/sub/c.png", "photos/sub/deeper/f.webp"]


def test_match_replaces_the_image_filter(photos):
    assert names("photos", recursive=True, match=re.compile(r"\.txt$|deeper")) == [
        "photos/notes.txt", "photos/sub/deeper/f.webp"]


def test_globs_expand_recursively_and_skip_directories(photos):
    assert sorted(names("photos/**/*.png")) == ["photos/b.png", "photos/sub/c.png"]
    assert sorted(names("photos/**")) == [  # directories matched by ** are not files
        "photos/a.JPG", "photos/b.png", "photos/sub/c.png", "photos/sub/deeper/f.webp"]


def test_a_named_file_is_taken_as_given(photos):
    (source,) = files.sources("photos/notes.txt", False, IMAGES, LIMIT)
    assert source.name == "photos/notes.txt"
    assert source.load() == b"notes.txt"


@pytest.mark.parametrize("arg", ["empty", "photos/*.gif", "photos/**/nothing*"])
def test_an_argument_that_finds_nothing_is_one_failing_item(photos, arg):
    (source,) = files.sources(arg, True, IMAGES, LIMIT)
    assert source.name == arg
    with pytest.raises(FileUnreadable, match="no files here match"):
        source.load()


def test_unlistable_directories_are_item_errors_in_place(photos, monkeypatch):
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    sources = list(files.sources("photos", True, IMAGES, LIMIT))
    assert [s.name for s in sources] == ["photos/a.JPG", "photos/b.png", "photos/sub"]
    with pytest.raises(FileUnreadable, match="cannot list directory: Permission denied"):
        sources[-1].load()


def test_read_returns_the_bytes_within_the_limit(tmp_path):
    path = tmp_path / "ok.png"
    path.write_bytes(b"x" * LIMIT)
    assert files.read(str(path), LIMIT) == b"x" * LIMIT


def test_read_refuses_by_size_before_opening(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(b"x" * (LIMIT + 1))
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail("opened a file over the limit"))
    with pytest.raises(TooLarge, match=f"file is {LIMIT + 1} bytes, the limit is {LIMIT}"):
        files.read(str(path), LIMIT)


def test_unreadable_paths_are_file_unreadable(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")  # opening it would block: refused by its type
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    cases = {"missing.png": "No such file", "fifo.png": "not a regular file",
             "dir.png": "not a regular file", "dangling.png": "No such file"}
    for name, message in cases.items():
        with pytest.raises(FileUnreadable, match=message):
            files.read(str(tmp_path / name), LIMIT)
