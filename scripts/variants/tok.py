import sys, json, random
import torch
import ref
from safetensors.torch import save_file
OUT = sys.argv[1]
GOLD = sys.argv[2]
T = ref.tokenizers.HuggingfaceTokenizer(name=GOLD + "/tokenizer", seq_len=512, clean="whitespace")
# The official tokenizer's other cleaning modes (Wan uses whitespace).
TOKENIZERS = {mode: ref.tokenizers.HuggingfaceTokenizer(name=GOLD + "/tokenizer", seq_len=512, clean=mode)
              for mode in ("lower", "canonicalize")}
TOKENIZERS["whitespace"] = T

S1 = ["ｶﾀｶﾅ と ひらがな と 漢字", "한국어 문장입니다. 고양이가 잔디 위를 걷는다.", "Tiếng Việt có dấu: người, đường, chữ",
      "x² + y³ = z⁴, Ⅻ o'clock, ① ② ③, ™ ©", "ﬀ ﬁ ﬂ ﬃ ligatures… and “smart” ‘quotes’ — dashes –",
      "Ã©tÃ© â€œquotedâ€\x9d mojibake", "&copy; 2025 &lt;&gt;&amp;&quot;&#x27; &amp;lt;b&amp;gt;",
      "zero\u200bwidth\u200bspace and nbsp\u00a0here and ideographic\u3000space", "bell\x07 and esc\x1b[31mred\x1b[0m text",
      "❤️ 1️⃣ 👍🏽 🏳️‍🌈 🇯🇵 emoji", "e\u0301 combining vs é precomposed, n\u0303", "<extra_id_5><extra_id_6>adjacent</s></s>",
      "   <pad>leading special", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!!!!!!!!!!", "C++ / C# / .NET, 1,000,000.50 $ € ¥ £",
      "∑∫√π ≈ ≠ ≤ ≥ ∞", "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Ελληνικά και Русский текст",
      "\ufeffBOM start", "line\u2028separator\u2029para\u0085nel", "𠀀𠀁 𪚥 rare CJK 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "Ｆｕｌｌ－ｗｉｄｔｈ１２３！？",
      "tab\tsep\r\nwindows\rmac", "'single' \"double\" `back`", "\\escaped\\ slashes // and ::colons::"]
random.seed(5)
words = ["cat", "猫", "river", "走", "light", "😀", "blue", "雨", "mountain", "ÿ", "sky", "的", "running", "A", "1234"]
S2 = [" ".join(random.choice(words) for _ in range(n)) for n in (400, 700)] + ["一" * 530, "word " * 510]


def case(name, strings, clean="whitespace"):
    T = TOKENIZERS[clean]
    ids, mask = T(strings, return_mask=True, add_special_tokens=True)
    lens = mask.sum(1).to(torch.int64)
    cat = torch.cat([ids[i, :int(lens[i])] for i in range(len(strings))]).to(torch.int64)
    cleaned = [T._clean(s) for s in strings]
    raw = [T.tokenizer(s, add_special_tokens=True).input_ids for s in strings]
    rl = torch.tensor([len(r) for r in raw], dtype=torch.int64)
    rc = torch.tensor([i for r in raw for i in r], dtype=torch.int64)
    ten = {"out.ids": cat, "out.lengths": lens, "out.mask_lengths": lens.clone(), "out.raw_ids": rc, "out.raw_lengths": rl}
    save_file(ten, f"{OUT}/cases/{name}.safetensors")
    sh = lambda k: {"tensor": "out." + k, "shape": list(ten["out." + k].shape), "dtype": "int64"}
    c = {"name": name, "component": "tokenizer", "model": None,
         "config": {"tokenizer": "tokenizer/", "seq_len": 512, "clean": clean, "add_special_tokens": True,
                    "pad_id": 0, "eos_id": 1, "unk_id": 2},
         "inputs": {"strings": strings},
         "outputs": {"ids": sh("ids"), "lengths": sh("lengths"), "mask_lengths": sh("mask_lengths"), "cleaned": cleaned,
                     "raw_ids": sh("raw_ids"), "raw_lengths": sh("raw_lengths")},
         "tolerance": {"rel_l2": 0, "max_abs": 0}, "notes": "variant"}
    json.dump(c, open(f"{OUT}/cases/{name}.json", "w"), indent=1, ensure_ascii=False)
    print("wrote", name, list(lens))



def mojibake(text, encoding):
    import ftfy.bad_codecs  # noqa: F401 (the sloppy-windows-* codecs)
    return text.encode("utf-8").decode(encoding)


# UTF-8 read in each code page ftfy's fix_encoding tries, a lost 0xA0, lost bytes (?), CESU-8 and a Java null, double
# mojibake, and the two strings of sweep.py's search that WanKit's cleaning got wrong: Windows-1257 with a restored
# 0xA0 after a full-width pound sign, and a badness pattern that needs Python's \w (U+00BC is a word character there).
S3 = [mojibake("Привет, как дела?", "windows-1251"), mojibake("Ελληνικά κείμενα", "windows-1253"),
      mojibake("Türkçe ğüşıöç", "windows-1254"), mojibake("Zażółć gęślą jaźń", "windows-1250"),
      mojibake("Lietuvių kalba", "sloppy-windows-1257"), mojibake("čeština řeřicha", "iso-8859-2"),
      mojibake("café crème brûlée", "macroman"), mojibake("❤ naïve", "cp437"),
      mojibake("voilà le travail", "latin-1").replace("\xa0", " "),
      mojibake("Ça va ‘très’ bien", "sloppy-windows-1252").replace("’", "?"),
      "T?”œâ•\ufffdrk?”œÂºe?karakterler: â”?Æ?â”œ?•\ufffdâ”¼?’â”€â–?â”œâ•¢â?œÂ?", "ڡ ȧ｜ ۊą￡ 🔠",
      b"CESU \xed\xa0\xbd\xed\xb8\x80 emoji and a Java null \xc0\x80 here".decode("latin-1"),
      mojibake(mojibake("“double” mojibake", "sloppy-windows-1252"), "sloppy-windows-1252")]

# NFC composes a Hangul LV syllable with a following trailing jamo (가 + ᆨ = 각); U+FEFF at the start of a string and
# after an escape of the case file (the tokenizer reads it as a space when the text is not cleaned); HTML references,
# terminal escapes and controls mixed as mix.py's search found them.
S4 = ["\uac00\u11a8 \ud788\u11c2 \u1100\u1161\u11a8", "\ufeff", "a\n\ufeff", "\x08İa\x00\ufeff&GDOT;",
      "™\uac00\u11a8&sqsubseteq;", "&noti;&#x22501æǄ\x94xxxx\n\ufeff", "각8&nbsp;\x07", "&#11;\x01ﬀ\uac00\u11a8”&#x2891a;^^^",
      "Å￼\u3000\x81ǅ▁\x9f\u3000&AMP;\x1b[H\uac00\u11a8‟", "bb&ampxyz;æ\x1b[31m″\x07„&#x206aa\x9cﬃ"]

# For the lower / canonicalize modes: Greek capital sigma at word ends (Python's final sigma), dotted capital I,
# title-case digraphs, capital sharp s, underscores and every ASCII punctuation character.
S5 = ["ΟΔΟΣ ΣΑΣ. Σ ΑΣ' ΑΣ'Β ΆΣ́ ὈΔΥΣΣΕΎΣ", "İstanbul ǅemal ẞ ΣΣ Σa", "snake_case_words __init__ A_B",
      "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ punctuation «guillemets» ¿qué? ¡sí! 「括弧」、。", "MiXeD CaSe Ünïcödé ÅNGSTRÖM Ω",
      "Don't STOP—ever… (really!) 3.14 & co.", "ＦＵＬＬ－ＷＩＤＴＨ ＡＢＣ", "\u0130\u0049\u0307 \u03a3\u0345"]

if __name__ == "__main__":
    only = sys.argv[3:] or ["v_tokenizer_mix", "v_tokenizer_long", "v_tokenizer_mojibake", "v_tokenizer_edges",
                            "v_tokenizer_lower", "v_tokenizer_canonicalize"]
    for name, strings, clean in [("v_tokenizer_mix", S1, "whitespace"), ("v_tokenizer_long", S2, "whitespace"),
                                 ("v_tokenizer_mojibake", S3, "whitespace"), ("v_tokenizer_edges", S4, "whitespace"),
                                 ("v_tokenizer_lower", S1 + S5, "lower"), ("v_tokenizer_canonicalize", S1 + S5, "canonicalize")]:
        if name in only:
            case(name, strings, clean)
