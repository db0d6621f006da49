"""Random tokenizer strings against the official cleaning and tokenizer (ftfy 6.3 + transformers), one tokenizer case
per string, in the golden format: a search, like sweep.py, not a fixed set.

  WAN21_SRC=CHECKOUT python strings.py OUT GOLDEN mix|mojibake|case SEED COUNT      (then: wan conformance OUT)
  STRINGS_CLEAN=lower|canonicalize ...: the official tokenizer's other cleaning modes (default: whitespace, Wan's)

mix: HTML references (named, all-caps, numeric, invalid), terminal escapes, line breaks, controls, combining marks and
Hangul jamo, width forms, ligatures, quotes, special tokens, words. mojibake: UTF-8 text decoded in the code pages ftfy
repairs (once or twice), with a lost 0xA0, lost bytes (?) or U+1A. case: letters of the scripts with case (Greek
capital sigma at word ends, special-casing letters), case-ignorable marks and apostrophes, punctuation, underscores."""
import sys, os, json, random, html.entities
OUT, GOLD, KIND, SEED, COUNT = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sys.argv = [sys.argv[0], OUT, GOLD, "none"]
os.makedirs(OUT + "/cases", exist_ok=True)
if not os.path.exists(OUT + "/tokenizer"):
    os.symlink(os.path.abspath(GOLD + "/tokenizer"), OUT + "/tokenizer")
import ftfy.bad_codecs  # noqa: F401 (the sloppy-windows-* codecs)
import tok

R = random.Random(SEED)


def mix_string():
    ents = list(html.entities.html5.keys())
    parts = [lambda: "&" + R.choice(ents), lambda: "&" + R.choice(ents).upper(), lambda: "&#%d;" % R.choice([0, 13, 65, 128, 150, 0x9d, 0xd800, 0x110000, 0x1f600, 0xfffe, 11, R.randint(0, 0x2ffff)]),
             lambda: "&#x%x" % R.randint(0, 0x2ffff) + R.choice([";", "", " "]), lambda: "&" + R.choice(["amp", "lt", "gt", "quot", "nbsp", "copy", "AMP", "noti", "notin", "ampxyz"]) + R.choice([";", "", ";;"]),
             lambda: "\x1b[" + R.choice(["31", "0", "1;32", "", "38;5;200"]) + R.choice(["m", "K", "H", "?"]), lambda: R.choice(["\r\n", "\r", "\n", "\u2028", "\u2029", "\x85", "\x0b", "\x0c"]),
             lambda: chr(R.choice([0, 1, 7, 8, 0x0e, 0x1f, 0x7f, 0x206a, 0xfeff, 0xfff9, 0xfffc, 0x200b, 0x200d, 0x1c])), lambda: R.choice(["e\u0301", "a\u0308\u0304", "\u1e9b\u0323", "n\u0303", "\u0041\u030a", "\u212b", "\u2126", "\uac00\u11a8", "\u1100\u1161"]),
             lambda: chr(R.choice([R.randint(0xff01, 0xff5e), R.randint(0xff61, 0xff9f), 0x3000, R.randint(0xffe0, 0xffee)])), lambda: chr(R.choice([0xfb00, 0xfb01, 0xfb02, 0xfb03, 0xfb04, 0xfb05, 0xfb06, 0x132, 0x133, 0x149, 0x1c4, 0x1c5, 0x1c6, 0x1c7, 0x1f1, 0xe6])),
             lambda: R.choice(["‘", "’", "‚", "‛", "“", "”", "„", "‟", "ʼ", "′", "″", "«", "»"]), lambda: R.choice(["<", ">", "<b>", "</s>", "<pad>", "<unk>", "<extra_id_0>", "<extra_id_99>", "<extra_id_100>", "▁", "  ", "\t"]),
             lambda: R.choice(["Hello", "world", "the cat", "猫が歩く", "日本", "a", "1234.5", "x²", "Ⅻ", "①", "½", "™", "ℌ", "ﬀ", "Ǆ", "ǅ", "ẞ", "İ", "ı", "ς", "ß"]),
             lambda: chr(R.randint(0x80, 0x9f)), lambda: chr(R.randint(0x20, 0x7e)) * R.randint(1, 4)]
    return "".join(R.choice(parts)() for _ in range(R.randint(1, 14)))


def mojibake_string():
    encs = ["latin-1","windows-1252","sloppy-windows-1252","windows-1251","sloppy-windows-1251","windows-1250","windows-1253","windows-1254","windows-1257","iso-8859-2","macroman","cp437","sloppy-windows-1250","sloppy-windows-1257"]
    texts = ["Привет, как дела? Всё хорошо.", "café crème brûlée à la carte", "Ελληνικά κείμενα εδώ", "Zażółć gęślą jaźń", "Ça va très bien, merci!",
             "Türkçe karakterler: ğüşıöç", "Lietuvių kalba ąčęėįšųūž", "日本語のテキスト", "中文文本测试", "한국어 텍스트", "emoji 😀🎉 test",
             "naïve — “quoted” ‘single’ … €100 £50 ©®™", "Ölçüm 100°C ± 5%", "straße über Äpfel", "ñandú pingüino", "čeština řeřicha",
             "Ørsted Æble å", "  spaced  à  la  ", "à", "í", "Ã", "word\u00a0nbsp", "𝕏 math 𝔸", "ﬁne", "x\u0301y"]
    t = R.choice(texts)
    if R.random() < 0.5:
        a = R.randrange(len(t)); t = t[a:a + R.randint(1, 12)]
    s = t
    for _ in range(R.choice([1, 1, 1, 2])):
        e = R.choice(encs)
        try:
            s = s.encode("utf-8").decode(e)
        except Exception:
            try:
                s = s.encode("utf-8").decode(e, errors="replace")
            except Exception:
                pass
    r = R.random()
    if r < 0.15:
        s = s.replace("\u00a0", " ")
    elif r < 0.25:
        s = "".join(c if R.random() > 0.1 else "?" for c in s)
    elif r < 0.3:
        s = s.replace("\ufffd", "\x1a")
    if R.random() < 0.3:
        s = R.choice(["Hello ", "x ", "", "¿ ", "« "]) + s + R.choice([" end", "", "!", " »"])
    return s


CASED = ("ΑΒΓΔΕΣΣΣσςΩάΆΐΰ" "ABCDEFabcdefİıIiẞßŉǰǅǄǆ" "АБВЖЯабвжя" "ԱԲաբ" "ႠႡⴀ" "𐐀𐐁𐐨" "ǈǋǲ" "ΣΣ")
IGNORABLE = "'’·\u0301\u0345\u0307\u00ad\u02b0\u200d.:"
OTHER = " _-!?,;\"()[]{}#@%&*/\\|~^`+=<>$123\t\n\u3000猫"


def case_string():
    n = R.randint(1, 30)
    return "".join(R.choice(CASED) if r < 0.6 else R.choice(IGNORABLE) if r < 0.8 else R.choice(OTHER)
                   for r in (R.random() for _ in range(n)))


make = {"mix": mix_string, "mojibake": mojibake_string, "case": case_string}[KIND]
CLEAN = os.environ.get("STRINGS_CLEAN", "whitespace")
tok.OUT = OUT
for i in range(COUNT):
    tok.case(f"{KIND}{SEED}_{CLEAN}_{i:04d}", [make()], CLEAN)
