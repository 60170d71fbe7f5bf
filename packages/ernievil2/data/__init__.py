"""Data: the TSV format and its bad-row policy, the tokenizer and vocabularies, image decoding and
preprocessing, prompts, data conversion and the generated demo data set.  Never imports Paddle."""
