// WanText: the umT5 tokenizer (Hugging Face tokenizer.json: Precompiled normalizer, Metaspace, Unigram with byte
// fallback, TemplateProcessing) and Wan's prompt cleaning. See ../shared/golden/README.md ("Tokenizer").
