"""A small synthetic multilingual corpus that xtm generates itself, for demos and end-to-end tests.

`write_example(out_dir)` writes English and Chinese news-like documents in six ECNews-style
categories, a partial zh-en dictionary, an aligned en-zh reference corpus for CNPMI and a
held-out set of short fr/de/es/ja documents for zero-shot inference. Everything comes from
hand-written topic lexicons and sentence templates: no network, no external data, stdlib only,
and the same seed always gives the same bytes.

Run `xtm-example OUT_DIR` (xtm.cli.example) to write it from the command line.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xtm.atomic import foreign_entries, is_plain_file, write_text

CATEGORIES = ("business", "education", "entertainment", "sports", "tech", "fashion")
TRAIN_LANGS = ("en", "zh")
UNSEEN_LANGS = ("fr", "de", "es", "ja")
TEST_FRACTION = 0.2
UNSEEN_PER_LANG = 12
REF_LINES = 300
MIN_TOKENS, MAX_TOKENS = 20, 80
# Share of dictionary pairs kept: a real bilingual dictionary misses part of a corpus vocabulary.
DICT_KEEP = 0.75
# Share of a two-category document's sentences drawn from its secondary category.
MIXED_DOC_RATE = 0.25
SECONDARY_SHARE = 0.3
BACKGROUND_SENTENCE_RATE = 0.15

Entry = tuple[str | None, str | None]  # (en, zh); None where a word occurs in one language's docs only


def _pairs(spec: str) -> list[tuple[str, str]]:
    """Parse 'en:zh en:zh ...' into pairs (keeps the lexicons below compact and readable)."""
    return [(a, b) for a, b in (item.split(":") for item in spec.split())]


@dataclass(frozen=True)
class _Lexicon:
    """Content words of one category.

    Nouns are split into agents (who acts: coach, investor) and things (what is acted on: match,
    stock) so that template sentences read naturally. `en_only`/`zh_only` words occur in one
    language's documents only (an '@' prefix marks an agent). `unseen` holds nouns, with their
    articles, for the held-out languages.
    """

    agents: list[tuple[str, str]]
    things: list[tuple[str, str]]
    verbs: list[tuple[str, str]]
    adjs: list[tuple[str, str]]
    en_only: list[str]
    zh_only: list[str]
    unseen: dict[str, list[str]]


# Chinese words are common words that jieba's default dictionary segments whole, and no
# dictionary word is a substring of another (a segmenter cannot keep both whole).
LEXICONS: dict[str, _Lexicon] = {
    "sports": _Lexicon(
        agents=_pairs("team:球队 coach:教练 player:球员 fan:球迷 referee:裁判 athlete:运动员 captain:队长 "
                      "striker:前锋 club:俱乐部 opponent:对手"),
        things=_pairs("match:比赛 football:足球 basketball:篮球 tennis:网球 stadium:体育场 goal:进球 "
                      "championship:锦标赛 league:联赛 season:赛季 final:决赛 Olympics:奥运会 medal:奖牌 "
                      "score:比分 record:纪录 victory:胜利 marathon:马拉松"),
        verbs=_pairs("win:赢得 lose:输掉 watch:观看 join:加入 host:主办 reach:进入 defend:卫冕"),
        adjs=_pairs("exciting:精彩 fierce:激烈 crucial:关键 tough:艰难 brilliant:出色 tense:紧张"),
        en_only=["@quarterback", "touchdown", "baseball", "cricket"],
        zh_only=["@国足", "乒乓球", "羽毛球", "排球"],
        unseen={
            "fr": ["le match", "l'équipe", "l'entraîneur", "le joueur", "le football", "le basket",
                   "le tennis", "le stade"],
            "de": ["das Spiel", "die Mannschaft", "der Trainer", "der Spieler", "der Fußball",
                   "der Basketball", "das Tennis", "das Stadion"],
            "es": ["el partido", "el equipo", "el entrenador", "el jugador", "el fútbol",
                   "el baloncesto", "el tenis", "el estadio"],
            "ja": ["試合", "チーム", "監督", "選手", "サッカー", "バスケットボール", "テニス", "スタジアム"],
        },
    ),
    "business": _Lexicon(
        agents=_pairs("company:公司 investor:投资者 bank:银行 shareholder:股东 manager:经理 customer:客户 "
                      "consumer:消费者 industry:行业"),
        things=_pairs("market:市场 stock:股票 profit:利润 economy:经济 price:价格 trade:贸易 revenue:收入 "
                      "export:出口 growth:增长 inflation:通胀 loan:贷款 tax:税收 factory:工厂 rate:利率 "
                      "currency:货币 deal:交易 merger:并购 budget:预算"),
        verbs=_pairs("buy:购买 sell:出售 raise:提高 cut:削减 expand:扩大 acquire:收购 boost:提振"),
        adjs=_pairs("stable:稳定 weak:疲软 cheap:便宜 expensive:昂贵 volatile:动荡 profitable:赚钱 "
                    "efficient:高效"),
        en_only=["@trader", "dividend", "Nasdaq", "payroll"],
        zh_only=["@央行", "房地产", "楼市", "人民币"],
        unseen={
            "fr": ["le marché", "l'entreprise", "l'investisseur", "la bourse", "le bénéfice",
                   "la banque", "l'économie", "le prix"],
            "de": ["der Markt", "das Unternehmen", "der Investor", "die Aktie", "der Gewinn", "die Bank",
                   "die Wirtschaft", "der Preis"],
            "es": ["el mercado", "la empresa", "el inversor", "la bolsa", "el beneficio", "el banco",
                   "la economía", "el precio"],
            "ja": ["市場", "会社", "投資家", "株式", "利益", "銀行", "経済", "価格"],
        },
    ),
    "education": _Lexicon(
        agents=_pairs("student:学生 teacher:老师 professor:教授 graduate:毕业生 principal:校长 "
                      "parent:家长 school:学校 university:大学 college:学院 kindergarten:幼儿园"),
        things=_pairs("exam:考试 course:课程 classroom:教室 degree:学位 scholarship:奖学金 "
                      "education:教育 homework:作业 textbook:教材 campus:校园 semester:学期 tuition:学费 "
                      "research:研究 library:图书馆 knowledge:知识 admission:招生 lecture:讲座"),
        verbs=_pairs("study:学习 pass:通过 attend:参加 complete:完成 improve:改善 review:复习 prepare:准备"),
        adjs=_pairs("difficult:困难 easy:容易 useful:有用 strict:严格 excellent:优秀 practical:实用"),
        en_only=["@sophomore", "tutoring", "GPA", "syllabus"],
        zh_only=["@班主任", "高考", "中考", "考研"],
        unseen={
            "fr": ["l'école", "l'étudiant", "l'enseignant", "l'université", "l'examen", "le cours",
                   "la salle de classe", "le professeur"],
            "de": ["die Schule", "der Student", "der Lehrer", "die Universität", "die Prüfung",
                   "der Kurs", "das Klassenzimmer", "der Professor"],
            "es": ["la escuela", "el estudiante", "el profesor", "la universidad", "el examen",
                   "el curso", "el aula", "el catedrático"],
            "ja": ["学校", "学生", "先生", "大学", "試験", "授業", "教室", "教授"],
        },
    ),
    "entertainment": _Lexicon(
        agents=_pairs("actor:演员 director:导演 singer:歌手 audience:观众 star:明星 band:乐队 "
                      "celebrity:名人"),
        things=_pairs("movie:电影 music:音乐 concert:演唱会 album:专辑 song:歌曲 show:节目 drama:电视剧 "
                      "award:奖项 comedy:喜剧 theater:剧院 ticket:门票 premiere:首映 script:剧本 "
                      "dance:舞蹈 stage:舞台 role:角色 trailer:预告片 animation:动画"),
        verbs=_pairs("perform:表演 release:发行 direct:执导 film:拍摄 enjoy:欣赏 produce:制作 "
                     "promote:宣传"),
        adjs=_pairs("funny:有趣 popular:热门 famous:著名 romantic:浪漫 touching:感人 classic:经典 "
                    "boring:无聊"),
        en_only=["@rapper", "Oscar", "sitcom", "soundtrack"],
        zh_only=["@偶像", "综艺", "相声", "春晚"],
        unseen={
            "fr": ["le film", "l'acteur", "le réalisateur", "la musique", "le chanteur", "le concert",
                   "l'album", "la chanson"],
            "de": ["der Film", "der Schauspieler", "der Regisseur", "die Musik", "der Sänger",
                   "das Konzert", "das Album", "das Lied"],
            "es": ["la película", "el actor", "el director", "la música", "el cantante", "el concierto",
                   "el álbum", "la canción"],
            "ja": ["映画", "俳優", "映画監督", "音楽", "歌手", "コンサート", "アルバム", "歌"],
        },
    ),
    "tech": _Lexicon(
        agents=_pairs("engineer:工程师 user:用户 hacker:黑客 robot:机器人 programmer:程序员 "
                      "operator:运营商"),
        things=_pairs("technology:技术 software:软件 computer:电脑 internet:互联网 phone:手机 data:数据 "
                      "network:网络 chip:芯片 algorithm:算法 platform:平台 device:设备 server:服务器 "
                      "security:安全 AI:人工智能 battery:电池 screen:屏幕 system:系统 innovation:创新 "
                      "website:网站 code:代码 satellite:卫星"),
        verbs=_pairs("launch:推出 develop:开发 upgrade:升级 install:安装 update:更新 download:下载 "
                     "test:测试"),
        adjs=_pairs("advanced:先进 modern:现代 convenient:方便 reliable:可靠 complex:复杂 automatic:自动 "
                    "fast:快速"),
        en_only=["@startup", "gadget", "firmware", "silicon"],
        zh_only=["@华为", "小米", "微信", "抖音"],
        unseen={
            "fr": ["la technologie", "le logiciel", "l'ordinateur", "l'internet", "le téléphone",
                   "les données", "le réseau", "le robot"],
            "de": ["die Technologie", "die Software", "der Computer", "das Internet", "das Handy",
                   "die Daten", "das Netzwerk", "der Roboter"],
            "es": ["la tecnología", "el software", "el ordenador", "el internet", "el teléfono",
                   "los datos", "la red", "el robot"],
            "ja": ["技術", "ソフトウェア", "コンピューター", "インターネット", "スマートフォン", "データ",
                   "ネットワーク", "ロボット"],
        },
    ),
    "fashion": _Lexicon(
        agents=_pairs("designer:设计师 model:模特 brand:品牌 magazine:杂志 buyer:买家 "
                      "photographer:摄影师"),
        things=_pairs("fashion:时尚 clothing:服装 dress:连衣裙 style:风格 color:颜色 collection:系列 "
                      "jacket:夹克 skirt:裙子 jewelry:珠宝 handbag:手提包 cosmetics:化妆品 perfume:香水 "
                      "trend:潮流 fabric:面料 silk:丝绸 beauty:美容 hairstyle:发型 wardrobe:衣柜 "
                      "sweater:毛衣 coat:外套 hat:帽子 luxury:奢侈品"),
        verbs=_pairs("wear:穿着 showcase:展示 choose:选择 decorate:装饰 create:打造 combine:搭配"),
        adjs=_pairs("elegant:优雅 stylish:时髦 bright:鲜艳 simple:简约 casual:休闲 unique:独特 "
                    "beautiful:美丽"),
        en_only=["@stylist", "denim", "couture", "runway"],
        zh_only=["@网红", "旗袍", "汉服", "穿搭"],
        unseen={
            "fr": ["la mode", "le créateur", "les vêtements", "la robe", "la marque", "le mannequin",
                   "le style", "la couleur"],
            "de": ["die Mode", "der Designer", "die Kleidung", "das Kleid", "die Marke", "das Model",
                   "der Stil", "die Farbe"],
            "es": ["la moda", "el diseñador", "la ropa", "el vestido", "la marca", "la modelo",
                   "el estilo", "el color"],
            "ja": ["ファッション", "デザイナー", "服", "ドレス", "ブランド", "モデル", "スタイル", "色"],
        },
    ),
}

# General news words shared by every category: real corpora are full of them, and a topic
# model has to learn to push them into a background topic rather than into the six categories.
BACKGROUND_AGENTS = _pairs("government:政府 city:城市 public:公众 country:国家 community:社区 media:媒体 "
                           "society:社会 region:地区")
BACKGROUND_THINGS = _pairs("report:报告 policy:政策 problem:问题 future:未来 history:历史 world:世界 "
                           "news:新闻 information:信息 situation:情况 result:结果 population:人口 "
                           "environment:环境")
TIMES: list[Entry] = [("on Sunday", "周日"), ("on Monday", "周一"), ("on Friday", "周五"),
                      ("this week", "本周"), ("next week", "下周"), ("next month", "下个月"),
                      ("this year", "今年"), ("next year", "明年")]
# Extra dictionary senses whose English side never occurs in the docs, as in real dictionaries.
EXTRA_SENSES = _pairs("比赛:game 电影:film 公司:firm 学生:pupil 手机:mobile 时尚:vogue 老师:instructor "
                      "市场:marketplace 球员:sportsman 技术:tech")

# Parallel sentence templates, tokens separated by spaces (the Chinese side pre-segmented so the
# reference corpus can be written tokenized without a segmenter). Slots: P1/P2 category agents,
# O1/O2 category things, V verb, A adjective, T time, BP/BO background agent/thing.
TOPIC_TEMPLATES: list[tuple[str, str]] = [
    ("the {P1} said the {P2} will {V} the {O1} {T} .", "{P1} 表示 {P2} 将 于 {T} {V} {O1} 。"),
    ("{T} , the {P1} helped the {P2} {V} the {A} {O1} .", "{T} ， {P1} 帮助 {P2} {V} {A} 的 {O1} 。"),
    ("many people are talking about the {O1} and the {O2} .", "许多 人 都 在 谈论 {O1} 和 {O2} 。"),
    ("the {O1} is very {A} this year .", "今年 的 {O1} 非常 {A} 。"),
    ("reports say the {P1} plans to {V} the {O1} .", "报道 称 {P1} 计划 {V} {O1} 。"),
    ("both the {O1} and the {O2} are {A} .", "{O1} 和 {O2} 都 很 {A} 。"),
    ("experts expect the {P1} to {V} the {O1} {T} .", "专家 预计 {P1} {T} 将 {V} {O1} 。"),
    ("everyone agreed that the {O1} was {A} .", "大家 都 认为 {O1} 很 {A} 。"),
    ("the {P1} and the {P2} will {V} the {O1} together .", "{P1} 和 {P2} 将 一起 {V} {O1} 。"),
    ("the {BP} is paying close attention to the {O1} .", "{BP} 正在 密切 关注 {O1} 。"),
    ("the {A} {O1} has drawn attention from the {BP} .", "{A} 的 {O1} 引起 了 {BP} 的 关注 。"),
]
BACKGROUND_TEMPLATES: list[tuple[str, str]] = [
    ("local officials said the {BP} will review the {BO} {T} .",
     "当地 官员 表示 {BP} 将 于 {T} 审查 {BO} 。"),
    ("the {BO} has drawn wide attention from the {BP} .", "{BO} 引起 了 {BP} 的 广泛 关注 。"),
    ("experts say the {BO} is changing quickly .", "专家 认为 {BO} 正在 迅速 变化 。"),
    ("the {BP} is worried about the {BO} .", "{BP} 对 {BO} 感到 担忧 。"),
]
# Short noun-only templates for the held-out languages (nouns carry their articles).
UNSEEN_TEMPLATES: dict[str, list[str]] = {
    "fr": ["{N1} et {N2} font la une cette semaine.",
           "Selon les experts, {N1}, {N2} et {N3} sont au centre de l'actualité.",
           "Les médias suivent de près {N1} et {N2}."],
    "de": ["{N1} und {N2} stehen diese Woche im Mittelpunkt.",
           "Laut Experten sind {N1}, {N2} und {N3} derzeit besonders wichtig.",
           "Die Medien berichten ausführlich: {N1} und {N2} sorgen für Schlagzeilen."],
    "es": ["{N1} y {N2} son noticia esta semana.",
           "Según los expertos, {N1}, {N2} y {N3} están en el centro de la actualidad.",
           "Los medios siguen de cerca {N1} y {N2}."],
    "ja": ["{N1}と{N2}が今週の話題になっている。",
           "専門家によると、{N1}と{N2}、そして{N3}が注目を集めている。",
           "メディアは{N1}について詳しく報じている。"],
}
PUNCT = frozenset({".", ",", "，", "。"})

Plan = tuple[tuple[str, str], dict[str, Entry]]  # (template pair, slot -> entry)


# ---------------------------------------------------------------------------------------------
# Sampling


def _zipf_weights(n: int, offset: int = 0) -> list[float]:
    """Zipf-like weights so a few words dominate each topic, as in real text."""
    return [1.0 / (i + offset + 2) ** 0.8 for i in range(n)]


@dataclass(frozen=True)
class _Pool:
    """Weighted word choices for one category in one rendering mode ('en', 'zh' or 'both')."""

    agents: list[Entry]
    agent_weights: list[float]
    things: list[Entry]
    thing_weights: list[float]
    verbs: list[Entry]
    adjs: list[Entry]


def _pool(lex: _Lexicon, mode: str) -> _Pool:
    agents: list[Entry] = list(lex.agents)
    things: list[Entry] = list(lex.things)
    agent_w, thing_w = _zipf_weights(len(agents)), _zipf_weights(len(things))
    # One-language words only appear in that language's docs; they rank like mid-frequency words.
    only = lex.en_only if mode == "en" else lex.zh_only if mode == "zh" else []
    for j, w in enumerate(only):
        entry: Entry = (w.lstrip("@"), None) if mode == "en" else (None, w.lstrip("@"))
        if w.startswith("@"):
            agents.append(entry)
            agent_w.append(_zipf_weights(1, offset=3)[0])
        else:
            things.append(entry)
            thing_w.append(_zipf_weights(1, offset=5 + j)[0])
    return _Pool(agents, agent_w, things, thing_w, list(lex.verbs), list(lex.adjs))


def _distinct(rng: random.Random, items: Sequence[Entry], weights: Sequence[float], k: int) -> list[Entry]:
    """k distinct weighted draws (random.choices alone repeats words within a sentence)."""
    picked: list[Entry] = []
    while len(picked) < k:
        e = rng.choices(items, weights)[0]
        if e not in picked:
            picked.append(e)
    return picked


def _plan_sentence(rng: random.Random, pool: _Pool | None) -> Plan:
    """Pick a template and fill its slots; `pool` None means a background-only sentence."""
    slots: dict[str, Entry] = {"T": rng.choice(TIMES), "BP": rng.choice(BACKGROUND_AGENTS),
                               "BO": rng.choice(BACKGROUND_THINGS)}
    if pool is None:
        return rng.choice(BACKGROUND_TEMPLATES), slots
    slots["P1"], slots["P2"] = _distinct(rng, pool.agents, pool.agent_weights, 2)
    slots["O1"], slots["O2"] = _distinct(rng, pool.things, pool.thing_weights, 2)
    slots["V"] = rng.choice(pool.verbs)
    slots["A"] = rng.choice(pool.adjs)
    return rng.choice(TOPIC_TEMPLATES), slots


def _render_tokens(plan: Plan, side: int) -> list[str]:
    """The sentence as tokens (side 0 English, 1 Chinese; multi-word English slots split)."""
    template, slots = plan
    out: list[str] = []
    for tok in template[side].split():
        if tok.startswith("{") and tok.endswith("}"):
            word = slots[tok[1:-1]][side]
            # A plan drawn for one language is only rendered in that one; "x" lets _plan_len
            # measure the other side without failing.
            out.extend((word or "x").split())
        else:
            out.append(tok)
    return out


def _plan_len(plan: Plan, side: int | None) -> int:
    """Word count of a plan on one side; None: the longer rendering, so both stay within bounds."""
    sides = (0, 1) if side is None else (side,)
    return max(sum(1 for t in _render_tokens(plan, s) if t not in PUNCT) for s in sides)


def _document_plans(rng: random.Random, pools: dict[str, _Pool], primary: str,
                    side: int | None) -> list[Plan]:
    """Sentence plans for one document of MIN_TOKENS..MAX_TOKENS words on `side` (see _plan_len).

    Mostly one category; MIXED_DOC_RATE of documents mix in a secondary category, and some
    sentences are general news, so topics overlap as they do in real news.
    """
    secondary = None
    if rng.random() < MIXED_DOC_RATE:
        secondary = rng.choice([c for c in CATEGORIES if c != primary])
    target = rng.randint(MIN_TOKENS, MAX_TOKENS)
    plans: list[Plan] = []
    length = 0
    while length < target:
        if rng.random() < BACKGROUND_SENTENCE_RATE:
            pool = None
        elif secondary is not None and rng.random() < SECONDARY_SHARE:
            pool = pools[secondary]
        else:
            pool = pools[primary]
        plan = _plan_sentence(rng, pool)
        n = _plan_len(plan, side)
        # Stop rather than overshoot the maximum once the document is long enough.
        if length >= MIN_TOKENS and length + n > MAX_TOKENS:
            break
        plans.append(plan)
        length += n
    return plans


def _en_text(sentences: list[list[str]]) -> str:
    """Detokenize English: punctuation attached, sentences capitalized."""
    out = []
    for toks in sentences:
        s = " ".join(toks).replace(" ,", ",").replace(" .", ".")
        out.append(s[0].upper() + s[1:])
    return " ".join(out)


# ---------------------------------------------------------------------------------------------
# Writers


def _atomic_write(path: Path, text: str) -> None:
    """Readers never see a half-written file (xtm.atomic: temporary, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)


def _jsonl(rows: list[dict[str, str]]) -> str:
    """Rows as JSON lines, Chinese and accents kept readable."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _train_docs(docs_per_lang: int, seed: int) -> list[dict[str, str]]:
    """The en and zh documents, labels balanced, ~20% of each label in the test split."""
    rows: list[dict[str, str]] = []
    for lang in TRAIN_LANGS:
        # One generator per language: en and zh docs are comparable, not translations.
        rng = random.Random(f"xtm-docs-{lang}-{seed}")
        pools = {c: _pool(LEXICONS[c], lang) for c in CATEGORIES}
        side = TRAIN_LANGS.index(lang)
        labels = [CATEGORIES[i % len(CATEGORIES)] for i in range(docs_per_lang)]
        rng.shuffle(labels)
        # Stratified split, so every label is in the test split even for small corpora.
        test_idx: set[int] = set()
        for c in CATEGORIES:
            idx = [i for i, lab in enumerate(labels) if lab == c]
            test_idx.update(rng.sample(idx, round(len(idx) * TEST_FRACTION)))
        for i, label in enumerate(labels):
            sents = [_render_tokens(plan, side) for plan in _document_plans(rng, pools, label, side)]
            text = _en_text(sents) if lang == "en" else "".join("".join(s) for s in sents)
            rows.append({"id": f"{lang}-{i + 1:04d}", "text": text, "lang": lang, "label": label,
                         "split": "test" if i in test_idx else "train"})
    return rows


def _unseen_docs(seed: int) -> list[dict[str, str]]:
    """Short fr/de/es/ja documents for zero-shot inference (never part of training)."""
    rng = random.Random(f"xtm-unseen-{seed}")
    rows: list[dict[str, str]] = []
    for lang in UNSEEN_LANGS:
        labels = [CATEGORIES[i % len(CATEGORIES)] for i in range(UNSEEN_PER_LANG)]
        rng.shuffle(labels)
        for i, label in enumerate(labels):
            nouns = LEXICONS[label].unseen[lang]
            sents = []
            for template in rng.sample(UNSEEN_TEMPLATES[lang], rng.randint(2, 3)):
                n1, n2, n3 = rng.sample(nouns, 3)
                s = template.format(N1=n1, N2=n2, N3=n3)
                sents.append(s[0].upper() + s[1:])
            text = ("" if lang == "ja" else " ").join(sents)
            # "test": these are evaluation-only documents; no model ever trains on them.
            rows.append({"id": f"{lang}-{i + 1:04d}", "text": text, "lang": lang, "label": label,
                         "split": "test"})
    return rows


def _dictionary(seed: int) -> str:
    """zh<TAB>en lines for a random ~75% of the lexicon pairs, plus a few extra senses."""
    rng = random.Random(f"xtm-dict-{seed}")
    pairs: list[tuple[str, str]] = []
    for c in CATEGORIES:
        lex = LEXICONS[c]
        pairs += lex.agents + lex.things + lex.verbs + lex.adjs
    pairs += BACKGROUND_AGENTS + BACKGROUND_THINGS
    kept = [(zh, en.lower()) for en, zh in pairs if rng.random() < DICT_KEEP]
    kept += EXTRA_SENSES  # already written zh:en
    kept.sort()
    return "".join(f"{zh}\t{en}\n" for zh, en in kept)


def _reference(seed: int) -> tuple[str, str]:
    """Aligned tokenized en/zh reference documents (parallel, from shared words only)."""
    rng = random.Random(f"xtm-ref-{seed}")
    pools = {c: _pool(LEXICONS[c], "both") for c in CATEGORIES}
    en_lines, zh_lines = [], []
    for i in range(REF_LINES):
        primary = CATEGORIES[i % len(CATEGORIES)]
        plans = _document_plans(rng, pools, primary, None)
        for side, lines in ((0, en_lines), (1, zh_lines)):
            toks = [tok.lower() for plan in plans for tok in _render_tokens(plan, side)]
            lines.append(" ".join(t for t in toks if t not in PUNCT))
    return "".join(x + "\n" for x in en_lines), "".join(x + "\n" for x in zh_lines)


README = """\
xtm built-in example corpus
===========================

Synthetic data generated by `xtm.examples.write_example` (seed {seed}); rerun
`xtm-example OUT_DIR --docs-per-lang {docs_per_lang} --seed {seed}` to get the same bytes.
Made from hand-written topic lexicons and sentence templates that ship with xtm; no external
data. License: same as the xtm project (Apache-2.0).

Files
- docs.jsonl     {n_docs} English and Chinese news-like documents, one JSON object per line:
                 id, text, lang (en|zh), label, split (train|test, ~20% test).
                 Labels: {cats}.
                 Chinese text has no spaces; segment it with jieba.
- unseen.jsonl   {n_unseen} short documents in fr, de, es, ja, never used for training:
                 for zero-shot inference demos.
- dict.tsv       partial Chinese-English dictionary, one `zh<TAB>en` pair per line; it covers
                 roughly 70% of the content words, as a real dictionary would.
- ref_en_zh/     aligned reference corpus for CNPMI: line i of ref.en.tok.txt and ref.zh.tok.txt
                 is the same document, tokens separated by single spaces. Generated with a
                 different random stream than docs.jsonl.
"""


def write_example(out_dir: str | Path, *, docs_per_lang: int = 600, seed: int = 0) -> dict[str, Path]:
    """Write the example corpus into `out_dir`; returns the written paths by name.

    Keys: docs, unseen, dict, ref_en, ref_zh, readme. Deterministic for a given seed.
    """
    if docs_per_lang < len(CATEGORIES):
        raise ValueError(f"docs_per_lang must be at least {len(CATEGORIES)}, got {docs_per_lang}")
    out = Path(out_dir)
    paths = {
        "docs": out / "docs.jsonl",
        "unseen": out / "unseen.jsonl",
        "dict": out / "dict.tsv",
        "ref_en": out / "ref_en_zh" / "ref.en.tok.txt",
        "ref_zh": out / "ref_en_zh" / "ref.zh.tok.txt",
        "readme": out / "README.txt",
    }
    _refuse_replacing_others(out, paths)
    docs = _train_docs(docs_per_lang, seed)
    unseen = _unseen_docs(seed)
    ref_en, ref_zh = _reference(seed)
    _atomic_write(paths["docs"], _jsonl(docs))
    _atomic_write(paths["unseen"], _jsonl(unseen))
    _atomic_write(paths["dict"], _dictionary(seed))
    _atomic_write(paths["ref_en"], ref_en)
    _atomic_write(paths["ref_zh"], ref_zh)
    _atomic_write(paths["readme"], README.format(seed=seed, docs_per_lang=docs_per_lang, n_docs=len(docs),
                                                 n_unseen=len(unseen), cats=", ".join(CATEGORIES)))
    return paths


def _refuse_replacing_others(out: Path, paths: dict[str, Path]) -> None:
    """The example's files replace files of those names only in a directory the example was written to
    (its README.txt says so): `xtm-example demo` replaced a user's own demo/docs.jsonl. Other names in the
    directory are left alone, so only the example's own are looked at; even where the example was written, a
    symlink at one of them is refused (its target, anyone's file, would be written)."""
    in_the_way = _in_the_way(out, paths, _written_here(paths["readme"]))
    if in_the_way:
        from xtm.errors import XtmError

        raise XtmError(f"holds {', '.join(in_the_way)}, not written by xtm-example (it would replace them): "
                       "choose a new or empty directory", path=out)


def _written_here(readme: Path) -> bool:
    """Whether `readme` is a README.txt the example wrote (a regular file starting with its first line)."""
    try:
        return is_plain_file(readme) and readme.read_text(encoding="utf-8").startswith(README.split("\n", 1)[0])
    except (OSError, UnicodeDecodeError):
        return False


def _in_the_way(out: Path, paths: dict[str, Path], ours: bool) -> list[str]:
    """The example's paths under `out` (relative, in `paths`' order) where something not the example's own is:
    anything where the example was not written (`ours` False), else a link or what is not a regular file (a
    directory for ref_en_zh/). xtm.atomic's foreign_entries, among the example's names only."""
    rel = [p.relative_to(out) for p in paths.values()]
    subdirs = {r.parts[0] for r in rel if len(r.parts) > 1}
    top = set(foreign_entries(out, lambda name: ours, among={r.parts[0] for r in rel},
                              is_our_dir=subdirs.__contains__))
    nested = {f"{d}/{n}" for d in subdirs - top
              for n in foreign_entries(out / d, lambda name: ours, among={r.name for r in rel if r.parts[0] == d})}
    shown: list[str] = []
    for r in rel:  # a directory in the way is named once, for all of its files
        name = r.parts[0] if r.parts[0] in top else r.as_posix()
        if (name in top or name in nested) and name not in shown:
            shown.append(name)
    return shown


def describe_written(paths: dict[str, Path]) -> list[str]:
    """One line per written file: its name, path, lines and bytes (what the commands show)."""
    out = []
    for name, path in paths.items():
        with open(path, encoding="utf-8") as f:
            n_lines = sum(1 for _ in f)
        out.append(f"{name:8s} {path}  ({n_lines} lines, {path.stat().st_size} bytes)")
    return out

