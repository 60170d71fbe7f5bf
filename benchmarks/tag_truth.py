"""Precision / recall of tags files against the truth column of demo TSVs (text, image_id, base64, tags).

    python benchmarks/tag_truth.py TRUTH.tsv TAGS.tsv [TAGS.tsv ...]

The demo generator writes the groups it drew as the 4th column (data/demo.py object_tags), so the demo's
train/dev/test files are their own answer key; a tags file from `python -m ernievil2 tag` is scored against it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "packages"))

from ernievil2.data.prompts import split_tags
from ernievil2.data.tags import read_tags_file
from ernievil2.data.tsv import BadRow, read_rows
from ernievil2.eval.tag_accuracy import tag_accuracy


def truth_of(path):
    truth = {}
    for row in read_rows(path):
        if isinstance(row, BadRow) or row.tags is None:
            sys.exit(f"{row.path if isinstance(row, BadRow) else path}:{row.line}: no truth column")
        truth[row.image_id] = split_tags(row.tags)
    return truth


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("truth", help="demo TSV with the tags column")
    parser.add_argument("tags", nargs="+", help="tags files (image_id<TAB>tag1,tag2,...)")
    args = parser.parse_args()
    truth = truth_of(args.truth)
    for path in args.tags:
        print(f"{path}: {tag_accuracy(read_tags_file(path), truth).line()}")


if __name__ == "__main__":
    main()
