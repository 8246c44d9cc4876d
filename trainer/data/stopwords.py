"""Stopword lists, so preprocessing needs no download (NLTK data, spaCy models).

xtm's own lists (English, Chinese, Japanese, French, German, Spanish, and Korean since token rules 3) hold
function words only: content words that merely happen to be frequent are left to the max_df filter, which
adapts to the corpus. Other
languages take stopwords-iso's list (the `stopwordsiso` package, 58 languages, installed with training),
which is broader: besides function words it holds some frequent content words (on English Wikipedia text it
would also drop 224 of the top 1,000 words xtm's list keeps: name, year, world, member). Without any list a
language's function words crowd its topics: max_df (a share of documents) removes only the most common, and
on English Wikipedia articles 42 of the top 100 remaining words were function words (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
from functools import cache

from xtm.config import TOKEN_RULES
from xtm.errors import XtmError
from xtm.languages import normalize_lang

__all__ = ["extra_stopwords", "function_words", "unused_stopwords", "stopword_source", "stopwords",
           "stopwords_id"]

_EN = """
a about above after again against ago all almost also although always am among an and another
any anybody anyone anything anyway anywhere are aren around as at be became because become
becomes been before being below beside besides between beyond both but by can cannot could
couldn did didn do does doesn doing don done down during each either else elsewhere enough etc
even ever every everybody everyone everything everywhere few for from further had hadn has hasn
have haven having he her here hers herself him himself his how however i if in indeed into is
isn it its itself just least less let ll m many may maybe me might mine more moreover most
mostly much must mustn my myself neither never nevertheless no nobody none nor not nothing now
nowhere o of off often on once one only onto or other others otherwise ought our ours ourselves
out over own per perhaps please quite rather re really s same say says said shall shan she
should shouldn since so some somebody someone something sometimes somewhere still such t than
that the their theirs them themselves then there thereby therefore these they this those though
through throughout thus to together too toward towards under until up upon us ve very via was
wasn we were weren what whatever when whenever where whereas wherever whether which while who
whoever whole whom whose why will with within without won would wouldn y yet you your yours
yourself yourselves b c d e f g h j k l n p q r u v w x z
"""

# Chinese function words: particles, pronouns, conjunctions, prepositions, common adverbs.
_ZH = """
的 了 着 过 地 得 之 与 及 和 跟 同 或 或者 而 而且 并 并且 且 但 但是 可是 然而 不过 因为 所以
因此 如果 假如 虽然 尽管 即使 于是 然后 那么 这么 怎么 什么 为什么 哪 哪里 哪儿 哪个 谁 这 那 这个
那个 这些 那些 这里 那里 这样 那样 这种 那种 此 其 其中 其他 其它 该 各 每 某 本 我 你 您 他 她 它
我们 你们 他们 她们 它们 咱们 自己 大家 是 在 于 被 把 让 给 对 对于 关于 从 向 往 以 为 为了 由
由于 到 比 就 都 也 还 又 再 才 已 已经 曾 曾经 很 太 更 最 非常 十分 不 没 没有 别 吧 吗 呢 啊 呀
哦 嗯 么 嘛 啦 哈 呗 个 些 一些 一个 等 等等 之后 之前 以后 以前 以及 之类 有 有些 所 所有 如 如此
即 即可 而是 只是 只 只有 就是 还是 也是 可以 可能 能 会 要 将 应 应该 该 着呢
"""

# Japanese function words: particles, auxiliaries and their conjugated stems as MeCab/janome
# cut them (まし from ました, だっ from だった), formal nouns, demonstratives.
_JA = """
の に は を た が で て と し れ さ も な か だ ば へ や ね よ わ ぞ ぜ さ から まで より ので のに けど
けれど けれども しかし でも そして また または および 及び ある あっ あり いる い いま おり おる
する し さ せ れる られる られ せる させる なる なっ なり なく ない なかっ ず ぬ ます まし ませ
です でし だっ だろ でしょ う よう そう こと もの ところ ため とき ほど など なお さらに ここ そこ
あそこ どこ こちら そちら あちら これ それ あれ どれ この その あの どの こう ああ どう という といった
について により による によって において における に対して に対する として とともに たち ら さん
ん でき できる き つ たり ながら ほか うち ただし それぞれ
"""

_FR = """
a afin ai aie aient aies ait alors as au aucun aucune aupres auquel aura aurai auraient aurais
aurait auras aurez auriez aurions aurons auront aussi autre autres aux auxquelles auxquels avaient
avais avait avant avec avez aviez avions avoir avons ayant ayez ayons c ce ceci cela celle celles
celui cependant certain certaine certaines certains ces cet cette ceux chaque chez ci comme
comment d dans de des donc dont du elle elles en encore entre es est et etaient etais etait
etant ete etre eu eux fait font fut hors ici il ils j je jusqu jusque l la le les leur leurs lors
lorsque lui m ma mais me meme mes moi moins mon n ne ni nos notre nous on ont ou par parce pas
peu peut peuvent plus pour pourquoi puis qu quand que quel quelle quelles quels qui quoi s sa
sans se sera serait ses si sien sienne soi soit son sont sous suis sur t ta tandis te tes toi ton
tous tout toute toutes tres tu un une vers via voici voila vos votre vous y à ça déjà été étaient
étais était étant être même où très
"""

_DE = """
aber alle allem allen aller alles als also am an ander andere anderem anderen anderer anderes
auch auf aus bei beim bin bis bist da dadurch daher damit dann darum das dass daß dem den denen
denn der deren des deshalb dessen die dies diese diesem diesen dieser dieses doch dort du durch
ein eine einem einen einer eines einig einige einigem einigen einiger einiges er es etwas euch
euer eure für gegen gewesen hab habe haben hat hatte hatten hier hin hinter ich ihm ihn ihnen ihr
ihre ihrem ihren ihrer ihres im in indem ins ist jede jedem jeden jeder jedes jene jenem jenen
jener jenes jetzt kann kein keine keinem keinen keiner keines können könnte machen man manche
manchem manchen mancher manches mein meine meinem meinen meiner meines mich mir mit muss musste
nach nicht nichts noch nun nur ob oder ohne sehr sein seine seinem seinen seiner seines selbst
sich sie sind so solche solchem solchen solcher solches soll sollte sondern sonst um und uns
unser unsere unter viel vom von vor war waren warst was weg weil weiter welche welchem welchen
welcher welches wenn werde werden wie wieder will wir wird wirst wo wollen wollte würde würden
zu zum zur zwar zwischen über
"""

_ES = """
a al algo algunas algunos ante antes como con contra cual cuales cuando de del desde donde
durante e el ella ellas ellos en entre era erais eran eras eres es esa esas ese eso esos esta
estaba estaban estado estamos estar estas este esto estos estoy fue fueron fui fuimos ha haber
había habían han has hasta hay he la las le les lo los mas me mi mis mucho muchos muy más mí nada
ni no nos nosotras nosotros nuestra nuestras nuestro nuestros o os otra otras otro otros para
pero poco por porque que quien quienes qué se sea sean ser será si sido sin sobre sois somos son
soy su sus suya suyas suyo suyos sí también tanto te tenemos tener tengo ti tiene tienen todo
todos tu tus tuya tuyo tú un una uno unos usted ustedes vosotras vosotros y ya yo él éramos
"""

# Korean as Kiwi writes it (xtm.runtime.korean: particles, endings, pronouns and adverbs are dropped by their tag):
# light verbs and adjectives in dictionary form (하다 "do", 되다 "become", 있다 / 없다 "there is / is not") and
# nouns used as grammar (경우 "in case", 때문 "because"). stopwords-iso's Korean list, cut by Kiwi, named content
# words (시간 "time", 전자 "electronics", 토하다 "vomit"): token rules 3 use this list instead.
_KO = """
하다 되다 있다 없다 같다 않다 이다 아니다 이렇다 그렇다 저렇다 어떻다 위하다 대하다 통하다 관하다 의하다 인하다
경우 정도 관련 이후 이전 때문 가운데 때 중 등 및 것 수 더 또 매우 너무 정말
"""

_LISTS: dict[str, frozenset[str]] = {
    lang: frozenset(text.split())
    for lang, text in {"en": _EN, "zh": _ZH, "ja": _JA, "fr": _FR, "de": _DE, "es": _ES, "ko": _KO}.items()
}
# xtm's lists that came with later token rules (a run made before keeps the stopwords it was made with).
_LIST_SINCE_RULES = {"ko": 3}
_EMPTY: frozenset[str] = frozenset()


def _own_list(code: str, rules: int) -> frozenset[str] | None:
    """xtm's list for `code` under token `rules`, or None."""
    return _LISTS.get(code) if rules >= _LIST_SINCE_RULES.get(code, 1) else None


def stopwords(lang: str, rules: int = TOKEN_RULES) -> frozenset[str]:
    """Stopwords for `lang` (ISO code or alias): xtm's list, else stopwords-iso's (token rules 2 on: a run made
    before them keeps its vocabulary), else an empty set."""
    code = _code(lang)
    if code is None:
        return _EMPTY
    own = _own_list(code, rules)
    if own is not None:
        return own
    return _iso_list(code, rules) if rules >= 2 else _EMPTY


@cache
def extra_stopwords(lang: str, rules: int, words: tuple[str, ...], user_words: tuple[str, ...] = ()) -> frozenset[str]:
    """A user's stopwords (xtm-train --stopwords) as `lang`'s tokenizer under token `rules` (and the user's words it
    keeps whole, --user-words) writes them: entries it reads as one word, as for stopwords-iso's lists ("e-mail"
    would otherwise drop "mail" everywhere)."""
    if not words:
        return _EMPTY
    return frozenset(token for _, token, used, _ in _cut_entries(lang, rules, words, user_words) if used)


@cache
def unused_stopwords(lang: str, rules: int, words: tuple[str, ...],
                     user_words: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """(entry, what the tokenizer makes of it) for a user's stopwords `lang`'s tokenizer does not read as themselves
    and so are not used: one other word (Korean 배송은 -> 배송) or several (e-mail -> e mail; 고객센터 -> 고객 센터).
    Said to the user, who meant them."""
    return tuple((entry, token) for entry, token, used, _ in _cut_entries(lang, rules, words, user_words)
                 if token and not used)


@cache
def _cut_entries(lang: str, rules: int, entries: tuple[str, ...],
                 user_words: tuple[str, ...] = ()) -> tuple[tuple[str, str, bool, int], ...]:
    """(entry, its token, or its tokens joined by spaces, or "", used, how many tokens) for each entry of a word
    list under `lang`'s tokenizer and token `rules`, each entry tokenized once.
    An entry is used when it is one word: one cut in several is not, nor is one a rewriting tokenizer (Korean's,
    which writes dictionary forms) changes, since the word it gives is another: Kiwi reads 자기집 ("one's own
    house") as 집 ("house"), 비교적 ("relatively") as 비교 ("comparison")."""
    from xtm.runtime.tokenize import REWRITING_KINDS, default_tokenizer_spec, make_tokenizer, normalized_token

    spec = default_tokenizer_spec(lang, rules, user_words)
    tokenize = make_tokenizer(spec)
    rewrites = spec.kind in REWRITING_KINDS
    out = []
    for entry in entries:
        cut = tokenize(entry)
        if len(cut) != 1:
            out.append((entry, " ".join(cut), False, len(cut)))
        else:
            out.append((entry, cut[0], not rewrites or cut[0] == normalized_token(entry.strip(), spec), 1))
    return tuple(out)


def function_words(lang: str) -> frozenset[str]:
    """xtm's own list for `lang` (function words only), else an empty set: for telling a sentence from a list of
    content words (phase 2's answer parser), where stopwords-iso's content words (Italian anni, città) would
    take a list of topic words for prose."""
    code = _code(lang)
    return _LISTS.get(code, _EMPTY) if code is not None else _EMPTY


def stopword_source(lang: str, rules: int = TOKEN_RULES) -> str:
    """Where `lang`'s stopwords come from, as a run records it: "xtm", "stopwords-iso <version>" or "none"."""
    code = _code(lang)
    if code is None:
        return "none"
    if _own_list(code, rules) is not None:
        return "xtm"
    if stopwords(code, rules):
        return f"stopwords-iso {_iso_version()}"
    return "none"


def _code(lang: str) -> str | None:
    try:
        return normalize_lang(lang)
    except XtmError:
        return None


# Above this share of entries longer than one token, a stopwords-iso list is not used (next to Vietnamese's 59%,
# the most is Korean's 14%).
_MAX_PHRASE_SHARE = 0.25


@cache
def _iso_list(code: str, rules: int) -> frozenset[str]:
    """stopwords-iso's list for `code` as the language's tokenizer under token `rules` cuts it ("dell'" -> "dell"),
    entries of one token only (a phrase such as Korean "줄은 몰랏다" would otherwise remove each of its words
    everywhere)."""
    try:
        import stopwordsiso
    except ImportError:  # a runtime-only install: training brings it
        return _EMPTY
    if not stopwordsiso.has_lang(code):
        return _EMPTY
    cut = _cut_entries(code, rules, tuple(sorted(stopwordsiso.stopwords(code))))
    if sum(pieces > 1 for *_, pieces in cut) > _MAX_PHRASE_SHARE * len(cut):
        # A list of words the tokenizer cuts smaller: Vietnamese (59% of its entries) is written a syllable per
        # space, so its one-token entries are syllables of content words too ("chính" of "chính phủ").
        return _EMPTY
    return frozenset(token for _, token, used, _ in cut if used)


@cache
def _iso_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stopwordsiso")
    except PackageNotFoundError:
        return "absent"


@cache
def stopwords_id() -> str:
    """What a corpus's tokens depend on besides the text and the token rules: the lists' content and the
    stopwords-iso version (out-of-core shards cut under other lists are rebuilt). Computed on first use, not
    at import."""
    h = hashlib.sha256()
    for code in sorted(_LISTS):
        h.update(f"{code}\0{' '.join(sorted(_LISTS[code]))}\n".encode())
    return f"xtm {h.hexdigest()[:12]}, stopwords-iso {_iso_version()}"

