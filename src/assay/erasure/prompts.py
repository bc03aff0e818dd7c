"""Prompts for the erasure analysis of text models.

- :data:`SAMPLE_PROMPTS`: 36 King James Bible verses (public domain; one from each of 36 chapters of the
  validation split that :mod:`assay.tasks.text` uses, so lm-4l never trained on them) and 12 short pieces
  of Python written for this file. The demo uses them; they need no corpus installed.
- :func:`corpus_windows`: windows of validation text (80% KJV, 20% Python stdlib, like lm-4l's training
  mix) as token ids, for measurements on many prompts (needs the corpora; see docs/training.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

KJV_VERSES = [
    'And God said unto him in a dream, Yea, I know that thou didst this in the integrity of thy heart; for '
    'I also withheld thee from sinning against me: therefore suffered I thee not to touch her.',
    'And they dreamed a dream both of them, each man his dream in one night, each man according to the '
    'interpretation of his dream, the butler and the baker of the king of Egypt, which were bound in the '
    'prison.',
    'And two golden rings shalt thou make to it under the crown of it, by the two corners thereof, upon '
    'the two sides of it shalt thou make it; and they shall be for places for the staves to bear it withal.',
    'And Moses said unto Aaron, and unto Eleazar and unto Ithamar, his sons, Uncover not your heads, '
    'neither rend your clothes; lest ye die, and lest wrath come upon all the people: but let your '
    'brethren, the whole house of Israel, bewail the burning which the LORD hath kindled.',
    'And Balaam said unto Balak, Stand by thy burnt offering, and I will go: peradventure the LORD will '
    'come to meet me: and whatsoever he sheweth me I will tell thee. And he went to an high place.',
    'And thou shalt write upon them all the words of this law, when thou art passed over, that thou mayest '
    'go in unto the land which the LORD thy God giveth thee, a land that floweth with milk and honey; as '
    'the LORD God of thy fathers hath promised thee.',
    'From Sihor, which is before Egypt, even unto the borders of Ekron northward, which is counted to the '
    'Canaanite: five lords of the Philistines; the Gazathites, and the Ashdothites, the Eshkalonites, the '
    'Gittites, and the Ekronites; also the Avites:',
    'And when the people were come into the camp, the elders of Israel said, Wherefore hath the LORD '
    'smitten us to day before the Philistines? Let us fetch the ark of the covenant of the LORD out of '
    'Shiloh unto us, that, when it cometh among us, it may save us out of the hand of our enemies.',
    'And Jonadab said unto him, Lay thee down on thy bed, and make thyself sick: and when thy father '
    'cometh to see thee, say unto him, I pray thee, let my sister Tamar come, and give me meat, and dress '
    'the meat in my sight, that I may see it, and eat it at her hand.',
    'And the LORD said unto him, I have heard thy prayer and thy supplication, that thou hast made before '
    'me: I have hallowed this house, which thou hast built, to put my name there for ever; and mine eyes '
    'and mine heart shall be there perpetually.',
    'The sons of Judah; Er, and Onan, and Shelah: which three were born unto him of the daughter of Shua '
    'the Canaanitess. And Er, the firstborn of Judah, was evil in the sight of the LORD; and he slew him.',
    'And Abijah set the battle in array with an army of valiant men of war, even four hundred thousand '
    'chosen men: Jeroboam also set the battle in array against him with eight hundred thousand chosen men, '
    'being mighty men of valour.',
    'And he caused his children to pass through the fire in the valley of the son of Hinnom: also he '
    'observed times, and used enchantments, and used witchcraft, and dealt with a familiar spirit, and '
    'with wizards: he wrought much evil in the sight of the LORD, to provoke him to anger.',
    'If we assay to commune with thee, wilt thou be grieved? but who can withhold himself from speaking?',
    'The kings of the earth set themselves, and the rulers take counsel together, against the LORD, and '
    'against his anointed, saying,',
    'My God, my God, why hast thou forsaken me? why art thou so far from helping me, and from the words of '
    'my roaring?',
    'They only consult to cast him down from his excellency: they delight in lies: they bless with their '
    'mouth, but they curse inwardly. Selah.',
    'Hide not thy face from me in the day when I am in trouble; incline thine ear unto me: in the day when '
    'I call answer me speedily.',
    'Whither the tribes go up, the tribes of the LORD, unto the testimony of Israel, to give thanks unto '
    'the name of the LORD.',
    'A virtuous woman is a crown to her husband: but she that maketh ashamed is as rottenness in his bones.',
    'Ah sinful nation, a people laden with iniquity, a seed of evildoers, children that are corrupters: '
    'they have forsaken the LORD, they have provoked the Holy One of Israel unto anger, they are gone away '
    'backward.',
    'A grievous vision is declared unto me; the treacherous dealer dealeth treacherously, and the spoiler '
    'spoileth. Go up, O Elam: besiege, O Media; all the sighing thereof have I made to cease.',
    'To appoint unto them that mourn in Zion, to give unto them beauty for ashes, the oil of joy for '
    'mourning, the garment of praise for the spirit of heaviness; that they might be called trees of '
    'righteousness, the planting of the LORD, that he might be glorified.',
    'And I brought them into the house of the LORD, into the chamber of the sons of Hanan, the son of '
    'Igdaliah, a man of God, which was by the chamber of the princes, which was above the chamber of '
    'Maaseiah the son of Shallum, the keeper of the door:',
    'Surely against me is he turned; he turneth his hand against me all the day.',
    'And I will turn thee back, and put hooks into thy jaws, and I will bring thee forth, and all thine '
    'army, horses and horsemen, all of them clothed with all sorts of armour, even a great company with '
    'bucklers and shields, all of them handling swords:',
    'I will break also the bar of Damascus, and cut off the inhabitant from the plain of Aven, and him '
    'that holdeth the sceptre from the house of Eden: and the people of Syria shall go into captivity unto '
    'Kir, saith the LORD.',
    'That they may do evil with both hands earnestly, the prince asketh, and the judge asketh for a '
    'reward; and the great man, he uttereth his mischievous desire: so they wrap it up.',
    'The blind receive their sight, and the lame walk, the lepers are cleansed, and the deaf hear, the '
    'dead are raised up, and the poor have the gospel preached to them.',
    'Then Jesus went with them. And when he was now not far from the house, the centurion sent friends to '
    'him, saying unto him, Lord, trouble not thyself: for I am not worthy that thou shouldest enter under '
    'my roof:',
    'The same came to Jesus by night, and said unto him, Rabbi, we know that thou art a teacher come from '
    'God: for no man can do these miracles that thou doest, except God be with him.',
    'I am verily a man which am a Jew, born in Tarsus, a city in Cilicia, yet brought up in this city at '
    'the feet of Gamaliel, and taught according to the perfect manner of the law of the fathers, and was '
    'zealous toward God, as ye all are this day.',
    'For out of much affliction and anguish of heart I wrote unto you with many tears; not that ye should '
    'be grieved, but that ye might know the love which I have more abundantly unto you.',
    'Which in other ages was not made known unto the sons of men, as it is now revealed unto his holy '
    'apostles and prophets by the Spirit;',
    'And verily they that are of the sons of Levi, who receive the office of the priesthood, have a '
    'commandment to take tithes of the people according to the law, that is, of their brethren, though '
    'they come out of the loins of Abraham:',
    'And the beast which I saw was like unto a leopard, and his feet were as the feet of a bear, and his '
    'mouth as the mouth of a lion: and the dragon gave him his power, and his seat, and great authority.',
]

PYTHON_SNIPPETS = [
    'def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / '
    'len(values)',
    'class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        '
    'self.items.append(item)',
    'import os\nimport sys\n\n\ndef main(argv=None):\n    if argv is None:\n        argv = '
    'sys.argv[1:]\n    return 0',
    'for i, line in enumerate(lines):\n    if not line.strip():\n        continue\n    key, _, value = '
    "line.partition('=')",
    "try:\n    with open(path, encoding='utf-8') as f:\n        data = f.read()\nexcept OSError as e:\n    "
    'raise ValueError(str(e))',
    "def __repr__(self):\n    return '%s(%r, %r)' % (self.__class__.__name__, self.name, self.value)",
    'if isinstance(obj, dict):\n    return {k: convert(v) for k, v in obj.items()}\nelif isinstance(obj, '
    'list):\n    return [convert(x) for x in obj]',
    '    def close(self):\n        if self._file is not None:\n            self._file.close()\n            '
    'self._file = None',
    'result = []\nwhile queue:\n    node = queue.pop(0)\n    result.append(node.value)\n    '
    'queue.extend(node.children)',
    "def test_empty(self):\n    self.assertEqual(parse(''), [])\n    self.assertRaises(TypeError, parse, "
    'None)',
    '    @property\n    def size(self):\n        """Return the number of bytes."""\n        return '
    'len(self._buffer)',
    "args = parser.parse_args()\nif args.verbose:\n    print('reading', args.input, file=sys.stderr)",
]

SAMPLE_PROMPTS = KJV_VERSES + PYTHON_SNIPPETS


def encode_prompts(tokenizer: Any, texts: list[str], max_len: int) -> list[list[int]]:
    """Return the token ids of each text, cut to ``max_len`` tokens."""
    return [tokenizer.encode(t).ids[:max_len] for t in texts]


def corpus_windows(tokenizer: Any, n: int, n_tokens: int, seed: int = 0,
                   weights: tuple[float, float] = (0.8, 0.2)) -> list[list[int]]:
    """Return ``n`` windows of ``n_tokens`` token ids from the validation splits of KJV and the Python stdlib.

    Windows start at random offsets (numpy ``default_rng(seed)``); each comes from KJV with probability
    ``weights[0]``. Raises BadInput (with the install command) if a corpus is missing.
    """
    from assay.tasks import text

    streams = []
    for name in (text.KJV, text.STDLIB):
        _, val = text.split_documents(text.load_corpus(name).documents)
        streams.append(text.encode_stream(tokenizer, val))
    rng = np.random.default_rng(seed)
    which = rng.choice(2, size=n, p=np.asarray(weights) / sum(weights))
    out = []
    for k in which:
        s = streams[int(k)]
        start = int(rng.integers(0, len(s) - n_tokens))
        out.append([int(t) for t in s[start : start + n_tokens]])
    return out
