// MoEngage through its Data API (https://developers.moengage.com/hc/en-us/categories/4404199274132-Data-API),
// as RudderStack's MOENGAGE destination maps events.
// Endpoints (origin https://api-<dc>.moengage.com from `region`: US → 01, EU → 02, IND → 03,
// US-DC-04 → 04, SGP-DC-05 → 05, IDN-DC-06 → 06, DC-101 → 101):
//   POST /v1/customer/<apiId>               identify (Track User API)
//   POST /v1/device/<apiId>                 identify with a device token (Track Device API)
//   POST /v1/event/<apiId>                  track (Create Event API)
//   POST /v1/customer/merge?app_id=<apiId>  alias (Merge User API)
// Auth: `Authorization: Basic base64(apiId:apiKey)` and `MOE-APPKEY: <apiId>` (not on merge).
// Config (RudderStack's keys): apiId (workspace id), apiKey, region, useObjectData. Keel
// extension: apiBaseUrl replaces the origin.
// Mapping:
//   identify → {type: "customer", customer_id (userId, else anonymousId), attributes}:
//     name, first_name, last_name, email, gender, mobile, source (as strings), age,
//     transactions, revenue (as numbers), created_time (createdAt), last_seen,
//     moe_unsubscribe, and the other traits, flattened ("a.b", "a[0]"); with useObjectData
//     the other traits keep their objects. When context.device.type and token are set, a
//     second request {type: "device", customer_id, device_id, attributes: platform ("iOS" for
//     Apple devices), push_id, model, push_preference, app_version, os_version, active and the
//     other properties}.
//   track → {type: "event", customer_id, device_id, actions: [{action: event, attributes:
//     properties (flattened unless useObjectData), platform, app_version, current_time
//     (timestamp), user_timezone_offset (context.timezone's current UTC offset, seconds)}]}.
//   alias → {merge_data: [{retained_user: userId, merged_user: previousId}]}.
//   page / screen / group → UnsupportedEventError (MoEngage's Data API records events and
//     users; RudderStack does not send these either; send page views as track events).
// Batching: none (each event is its own API call, as RudderStack sends them; the bulk
// import API takes a different payload).
// Departures from RudderStack: the timezone offset comes from a table built into this
// script (IANA zones, daylight saving rules, 2025-2040 transitions for the irregular zones)
// since V8 here has no time zone data; missing apiId / apiKey are refused (400); RudderStack
// deletes the excluded traits from the event while mapping, which changes later look-ups
// (device customer_id from traits.id) — Keel reads the event as sent.
import { DestinationError, UnsupportedEventError, baseUrl, base64, get } from "keel";

// Standard offset (minutes) → zones without daylight saving time.
const TZ_FIXED = {
  "-720": "Etc/GMT+12",
  "-660": "Etc/GMT+11 Pacific/Midway Pacific/Niue Pacific/Pago_Pago Pacific/Samoa US/Samoa",
  "-600": "Etc/GMT+10 HST Pacific/Honolulu Pacific/Johnston Pacific/Rarotonga Pacific/Tahiti US/Hawaii",
  "-570": "Pacific/Marquesas",
  "-540": "Etc/GMT+9 Pacific/Gambier",
  "-480": "Etc/GMT+8 Pacific/Pitcairn",
  "-420": "America/Creston America/Dawson America/Dawson_Creek America/Fort_Nelson America/Hermosillo America/Mazatlan America/Phoenix America/Whitehorse Canada/Yukon Etc/GMT+7 MST Mexico/BajaSur US/Arizona",
  "-360": "America/Bahia_Banderas America/Belize America/Chihuahua America/Costa_Rica America/El_Salvador America/Guatemala America/Managua America/Merida America/Mexico_City America/Monterrey America/Regina America/Swift_Current America/Tegucigalpa Canada/Saskatchewan Etc/GMT+6 Mexico/General Pacific/Galapagos",
  "-300": "America/Atikokan America/Bogota America/Cancun America/Cayman America/Coral_Harbour America/Eirunepe America/Guayaquil America/Jamaica America/Lima America/Panama America/Porto_Acre America/Rio_Branco Brazil/Acre EST Etc/GMT+5 Jamaica",
  "-240": "America/Anguilla America/Antigua America/Aruba America/Barbados America/Blanc-Sablon America/Boa_Vista America/Campo_Grande America/Caracas America/Cuiaba America/Curacao America/Dominica America/Grenada America/Guadeloupe America/Guyana America/Kralendijk America/La_Paz America/Lower_Princes America/Manaus America/Marigot America/Martinique America/Montserrat America/Port_of_Spain America/Porto_Velho America/Puerto_Rico America/Santo_Domingo America/St_Barthelemy America/St_Kitts America/St_Lucia America/St_Thomas America/St_Vincent America/Tortola America/Virgin Brazil/West Etc/GMT+4",
  "-180": "America/Araguaina America/Argentina/Buenos_Aires America/Argentina/Catamarca America/Argentina/ComodRivadavia America/Argentina/Cordoba America/Argentina/Jujuy America/Argentina/La_Rioja America/Argentina/Mendoza America/Argentina/Rio_Gallegos America/Argentina/Salta America/Argentina/San_Juan America/Argentina/San_Luis America/Argentina/Tucuman America/Argentina/Ushuaia America/Asuncion America/Bahia America/Belem America/Buenos_Aires America/Catamarca America/Cayenne America/Cordoba America/Coyhaique America/Fortaleza America/Jujuy America/Maceio America/Mendoza America/Montevideo America/Paramaribo America/Punta_Arenas America/Recife America/Rosario America/Santarem America/Sao_Paulo Antarctica/Palmer Antarctica/Rothera Atlantic/Stanley Brazil/East Etc/GMT+3",
  "-120": "America/Noronha Atlantic/South_Georgia Brazil/DeNoronha Etc/GMT+2",
  "-60": "Atlantic/Cape_Verde Etc/GMT+1",
  "0": "Africa/Abidjan Africa/Accra Africa/Bamako Africa/Banjul Africa/Bissau Africa/Conakry Africa/Dakar Africa/Freetown Africa/Lome Africa/Monrovia Africa/Nouakchott Africa/Ouagadougou Africa/Sao_Tome Africa/Timbuktu America/Danmarkshavn Atlantic/Reykjavik Atlantic/St_Helena Etc/GMT Etc/GMT+0 Etc/GMT-0 Etc/GMT0 Etc/Greenwich Etc/UCT Etc/UTC Etc/Universal Etc/Zulu GMT GMT+0 GMT-0 GMT0 Greenwich Iceland UCT UTC Universal Zulu",
  "60": "Africa/Algiers Africa/Bangui Africa/Brazzaville Africa/Douala Africa/Kinshasa Africa/Lagos Africa/Libreville Africa/Luanda Africa/Malabo Africa/Ndjamena Africa/Niamey Africa/Porto-Novo Africa/Tunis Etc/GMT-1",
  "120": "Africa/Blantyre Africa/Bujumbura Africa/Gaborone Africa/Harare Africa/Johannesburg Africa/Juba Africa/Khartoum Africa/Kigali Africa/Lubumbashi Africa/Lusaka Africa/Maputo Africa/Maseru Africa/Mbabane Africa/Tripoli Africa/Windhoek Etc/GMT-2 Europe/Kaliningrad Libya",
  "180": "Africa/Addis_Ababa Africa/Asmara Africa/Asmera Africa/Dar_es_Salaam Africa/Djibouti Africa/Kampala Africa/Mogadishu Africa/Nairobi Antarctica/Syowa Asia/Aden Asia/Amman Asia/Baghdad Asia/Bahrain Asia/Damascus Asia/Istanbul Asia/Kuwait Asia/Qatar Asia/Riyadh Etc/GMT-3 Europe/Istanbul Europe/Kirov Europe/Minsk Europe/Moscow Europe/Simferopol Europe/Volgograd Indian/Antananarivo Indian/Comoro Indian/Mayotte Turkey W-SU",
  "210": "Asia/Tehran Iran",
  "240": "Asia/Baku Asia/Dubai Asia/Muscat Asia/Tbilisi Asia/Yerevan Etc/GMT-4 Europe/Astrakhan Europe/Samara Europe/Saratov Europe/Ulyanovsk Indian/Mahe Indian/Mauritius Indian/Reunion",
  "270": "Asia/Kabul",
  "300": "Antarctica/Mawson Antarctica/Vostok Asia/Almaty Asia/Aqtau Asia/Aqtobe Asia/Ashgabat Asia/Ashkhabad Asia/Atyrau Asia/Dushanbe Asia/Karachi Asia/Oral Asia/Qostanay Asia/Qyzylorda Asia/Samarkand Asia/Tashkent Asia/Yekaterinburg Etc/GMT-5 Indian/Kerguelen Indian/Maldives",
  "330": "Asia/Calcutta Asia/Colombo Asia/Kolkata",
  "345": "Asia/Kathmandu Asia/Katmandu",
  "360": "Asia/Bishkek Asia/Dacca Asia/Dhaka Asia/Kashgar Asia/Omsk Asia/Thimbu Asia/Thimphu Asia/Urumqi Etc/GMT-6 Indian/Chagos",
  "390": "Asia/Rangoon Asia/Yangon Indian/Cocos",
  "420": "Antarctica/Davis Asia/Bangkok Asia/Barnaul Asia/Ho_Chi_Minh Asia/Hovd Asia/Jakarta Asia/Krasnoyarsk Asia/Novokuznetsk Asia/Novosibirsk Asia/Phnom_Penh Asia/Pontianak Asia/Saigon Asia/Tomsk Asia/Vientiane Etc/GMT-7 Indian/Christmas",
  "480": "Antarctica/Casey Asia/Brunei Asia/Choibalsan Asia/Chongqing Asia/Chungking Asia/Harbin Asia/Hong_Kong Asia/Irkutsk Asia/Kuala_Lumpur Asia/Kuching Asia/Macao Asia/Macau Asia/Makassar Asia/Manila Asia/Shanghai Asia/Singapore Asia/Taipei Asia/Ujung_Pandang Asia/Ulaanbaatar Asia/Ulan_Bator Australia/Perth Australia/West Etc/GMT-8 Hongkong PRC ROC Singapore",
  "525": "Australia/Eucla",
  "540": "Asia/Chita Asia/Dili Asia/Jayapura Asia/Khandyga Asia/Pyongyang Asia/Seoul Asia/Tokyo Asia/Yakutsk Etc/GMT-9 Japan Pacific/Palau ROK",
  "570": "Australia/Darwin Australia/North",
  "600": "Antarctica/DumontDUrville Asia/Ust-Nera Asia/Vladivostok Australia/Brisbane Australia/Lindeman Australia/Queensland Etc/GMT-10 Pacific/Chuuk Pacific/Guam Pacific/Port_Moresby Pacific/Saipan Pacific/Truk Pacific/Yap",
  "660": "Asia/Magadan Asia/Sakhalin Asia/Srednekolymsk Etc/GMT-11 Pacific/Bougainville Pacific/Efate Pacific/Guadalcanal Pacific/Kosrae Pacific/Noumea Pacific/Pohnpei Pacific/Ponape",
  "720": "Asia/Anadyr Asia/Kamchatka Etc/GMT-12 Kwajalein Pacific/Fiji Pacific/Funafuti Pacific/Kwajalein Pacific/Majuro Pacific/Nauru Pacific/Tarawa Pacific/Wake Pacific/Wallis",
  "780": "Etc/GMT-13 Pacific/Apia Pacific/Enderbury Pacific/Fakaofo Pacific/Kanton Pacific/Tongatapu",
  "840": "Etc/GMT-14 Pacific/Kiritimati",
};
// "rule,standard offset,saving" (minutes) → zones that follow that daylight saving rule.
const TZ_RULED = {
  "AU,570,60": "Australia/Adelaide Australia/Broken_Hill Australia/South Australia/Yancowinna",
  "AU,600,60": "Antarctica/Macquarie Australia/ACT Australia/Canberra Australia/Currie Australia/Hobart Australia/Melbourne Australia/NSW Australia/Sydney Australia/Tasmania Australia/Victoria",
  "AU,660,60": "Pacific/Norfolk",
  "CU,-300,60": "America/Havana Cuba",
  "EG,120,60": "Africa/Cairo Egypt",
  "EU,-120,60": "America/Godthab America/Nuuk America/Scoresbysund",
  "EU,-60,60": "Atlantic/Azores",
  "EU,0,120": "Antarctica/Troll",
  "EU,0,60": "Atlantic/Canary Atlantic/Faeroe Atlantic/Faroe Atlantic/Madeira Eire Europe/Belfast Europe/Dublin Europe/Guernsey Europe/Isle_of_Man Europe/Jersey Europe/Lisbon Europe/London GB GB-Eire Portugal WET",
  "EU,120,60": "Asia/Famagusta Asia/Nicosia EET Europe/Athens Europe/Bucharest Europe/Helsinki Europe/Kiev Europe/Kyiv Europe/Mariehamn Europe/Nicosia Europe/Riga Europe/Sofia Europe/Tallinn Europe/Uzhgorod Europe/Vilnius Europe/Zaporozhye",
  "EU,60,60": "Africa/Ceuta Arctic/Longyearbyen Atlantic/Jan_Mayen CET Europe/Amsterdam Europe/Andorra Europe/Belgrade Europe/Berlin Europe/Bratislava Europe/Brussels Europe/Budapest Europe/Busingen Europe/Copenhagen Europe/Gibraltar Europe/Ljubljana Europe/Luxembourg Europe/Madrid Europe/Malta Europe/Monaco Europe/Oslo Europe/Paris Europe/Podgorica Europe/Prague Europe/Rome Europe/San_Marino Europe/Sarajevo Europe/Skopje Europe/Stockholm Europe/Tirane Europe/Vaduz Europe/Vatican Europe/Vienna Europe/Warsaw Europe/Zagreb Europe/Zurich MET Poland",
  "IL,120,60": "Asia/Jerusalem Asia/Tel_Aviv Israel",
  "LB,120,60": "Asia/Beirut",
  "LH,630,30": "Australia/LHI Australia/Lord_Howe",
  "MD,120,60": "Europe/Chisinau Europe/Tiraspol",
  "NZ,720,60": "Antarctica/McMurdo Antarctica/South_Pole NZ Pacific/Auckland",
  "US,-180,60": "America/Miquelon",
  "US,-210,60": "America/St_Johns Canada/Newfoundland",
  "US,-240,60": "America/Glace_Bay America/Goose_Bay America/Halifax America/Moncton America/Thule Atlantic/Bermuda Canada/Atlantic",
  "US,-300,60": "America/Detroit America/Fort_Wayne America/Grand_Turk America/Indiana/Indianapolis America/Indiana/Marengo America/Indiana/Petersburg America/Indiana/Vevay America/Indiana/Vincennes America/Indiana/Winamac America/Indianapolis America/Iqaluit America/Kentucky/Louisville America/Kentucky/Monticello America/Louisville America/Montreal America/Nassau America/New_York America/Nipigon America/Pangnirtung America/Port-au-Prince America/Thunder_Bay America/Toronto Canada/Eastern EST5EDT US/East-Indiana US/Eastern US/Michigan",
  "US,-360,60": "America/Chicago America/Indiana/Knox America/Indiana/Tell_City America/Knox_IN America/Matamoros America/Menominee America/North_Dakota/Beulah America/North_Dakota/Center America/North_Dakota/New_Salem America/Ojinaga America/Rainy_River America/Rankin_Inlet America/Resolute America/Winnipeg CST6CDT Canada/Central US/Central US/Indiana-Starke",
  "US,-420,60": "America/Boise America/Cambridge_Bay America/Ciudad_Juarez America/Denver America/Edmonton America/Inuvik America/Shiprock America/Yellowknife Canada/Mountain MST7MDT Navajo US/Mountain",
  "US,-480,60": "America/Ensenada America/Los_Angeles America/Santa_Isabel America/Tijuana America/Vancouver Canada/Pacific Mexico/BajaNorte PST8PDT US/Pacific",
  "US,-540,60": "America/Anchorage America/Juneau America/Metlakatla America/Nome America/Sitka America/Yakutat US/Alaska",
  "US,-600,60": "America/Adak America/Atka US/Aleutian",
};
// Zones with irregular rules: [UTC minute of a change, offset after it], 2025-2040 (the first: the offset on 2025-01-01).
const TZ_LISTED = {
  "Africa/Casablanca": [[0,60],[29004600,0],[29065080,60],[29518680,0],[29569080,60],[30032760,0],[30083160,60],[30536760,0],[30597240,60],[31050840,0],[31101240,60],[31554840,0],[31615320,60],[32068920,0],[32119320,60],[32583000,0],[32633400,60],[33087000,0],[33147480,60],[33601080,0],[33651480,60],[34105080,0],[34165560,60],[34619160,0],[34679640,60],[35133240,0],[35183640,60],[35637240,0],[35697720,60],[36151320,0],[36201720,60],[36665400,0],[36715800,60],[37169400,0],[37229880,60]],
  "Africa/El_Aaiun": [[0,60],[29004600,0],[29065080,60],[29518680,0],[29569080,60],[30032760,0],[30083160,60],[30536760,0],[30597240,60],[31050840,0],[31101240,60],[31554840,0],[31615320,60],[32068920,0],[32119320,60],[32583000,0],[32633400,60],[33087000,0],[33147480,60],[33601080,0],[33651480,60],[34105080,0],[34165560,60],[34619160,0],[34679640,60],[35133240,0],[35183640,60],[35637240,0],[35697720,60],[36151320,0],[36201720,60],[36665400,0],[36715800,60],[37169400,0],[37229880,60]],
  "America/Santiago": [[0,-180],[29065140,-240],[29286960,-180],[29589300,-240],[29811120,-180],[30113460,-240],[30335280,-180],[30637620,-240],[30859440,-180],[31171860,-240],[31383600,-180],[31696020,-240],[31917840,-180],[32220180,-240],[32442000,-180],[32744340,-240],[32966160,-180],[33268500,-240],[33490320,-180],[33792660,-240],[34014480,-180],[34326900,-240],[34538640,-180],[34851060,-240],[35072880,-180],[35375220,-240],[35597040,-180],[35899380,-240],[36121200,-180],[36423540,-240],[36645360,-180],[36957780,-240],[37169520,-180]],
  "Asia/Gaza": [[0,120],[29073600,180],[29355780,120],[29577600,180],[29879940,120],[30101760,180],[30414180,120],[30625920,180],[30938340,120],[31150080,180],[31462500,120],[31684320,180],[31986660,120],[32208480,180],[32510820,120],[32732640,180],[33045060,120],[33256800,180],[33569220,120],[33780960,180],[34093380,120],[34305120,180],[34617540,120],[34839360,180],[35131620,120],[35363520,180],[35645700,120],[35887680,180],[36149700,120],[36411840,180],[36663780,120],[36936000,180],[37167780,120],[37238400,180],[37248420,120]],
  "Asia/Hebron": [[0,120],[29073600,180],[29355780,120],[29577600,180],[29879940,120],[30101760,180],[30414180,120],[30625920,180],[30938340,120],[31150080,180],[31462500,120],[31684320,180],[31986660,120],[32208480,180],[32510820,120],[32732640,180],[33045060,120],[33256800,180],[33569220,120],[33780960,180],[34093380,120],[34305120,180],[34617540,120],[34839360,180],[35131620,120],[35363520,180],[35645700,120],[35887680,180],[36149700,120],[36411840,180],[36663780,120],[36936000,180],[37167780,120],[37238400,180],[37248420,120]],
  "Chile/Continental": [[0,-180],[29065140,-240],[29286960,-180],[29589300,-240],[29811120,-180],[30113460,-240],[30335280,-180],[30637620,-240],[30859440,-180],[31171860,-240],[31383600,-180],[31696020,-240],[31917840,-180],[32220180,-240],[32442000,-180],[32744340,-240],[32966160,-180],[33268500,-240],[33490320,-180],[33792660,-240],[34014480,-180],[34326900,-240],[34538640,-180],[34851060,-240],[35072880,-180],[35375220,-240],[35597040,-180],[35899380,-240],[36121200,-180],[36423540,-240],[36645360,-180],[36957780,-240],[37169520,-180]],
  "Chile/EasterIsland": [[0,-300],[29065140,-360],[29286960,-300],[29589300,-360],[29811120,-300],[30113460,-360],[30335280,-300],[30637620,-360],[30859440,-300],[31171860,-360],[31383600,-300],[31696020,-360],[31917840,-300],[32220180,-360],[32442000,-300],[32744340,-360],[32966160,-300],[33268500,-360],[33490320,-300],[33792660,-360],[34014480,-300],[34326900,-360],[34538640,-300],[34851060,-360],[35072880,-300],[35375220,-360],[35597040,-300],[35899380,-360],[36121200,-300],[36423540,-360],[36645360,-300],[36957780,-360],[37169520,-300]],
  "NZ-CHAT": [[0,825],[29064360,765],[29316360,825],[29588520,765],[29840520,825],[30112680,765],[30364680,825],[30636840,765],[30888840,825],[31161000,765],[31423080,825],[31695240,765],[31947240,825],[32219400,765],[32471400,825],[32743560,765],[32995560,825],[33267720,765],[33519720,825],[33791880,765],[34043880,825],[34316040,765],[34578120,825],[34850280,765],[35102280,825],[35374440,765],[35626440,825],[35898600,765],[36150600,825],[36422760,765],[36674760,825],[36946920,765],[37209000,825]],
  "Pacific/Chatham": [[0,825],[29064360,765],[29316360,825],[29588520,765],[29840520,825],[30112680,765],[30364680,825],[30636840,765],[30888840,825],[31161000,765],[31423080,825],[31695240,765],[31947240,825],[32219400,765],[32471400,825],[32743560,765],[32995560,825],[33267720,765],[33519720,825],[33791880,765],[34043880,825],[34316040,765],[34578120,825],[34850280,765],[35102280,825],[35374440,765],[35626440,825],[35898600,765],[36150600,825],[36422760,765],[36674760,825],[36946920,765],[37209000,825]],
  "Pacific/Easter": [[0,-300],[29065140,-360],[29286960,-300],[29589300,-360],[29811120,-300],[30113460,-360],[30335280,-300],[30637620,-360],[30859440,-300],[31171860,-360],[31383600,-300],[31696020,-360],[31917840,-300],[32220180,-360],[32442000,-300],[32744340,-360],[32966160,-300],[33268500,-360],[33490320,-300],[33792660,-360],[34014480,-300],[34326900,-360],[34538640,-300],[34851060,-360],[35072880,-300],[35375220,-360],[35597040,-300],[35899380,-360],[36121200,-300],[36423540,-360],[36645360,-300],[36957780,-360],[37169520,-300]],
};

const DATA_CENTERS = {
  US: "01",
  EU: "02",
  IND: "03",
  "US-DC-04": "04",
  "SGP-DC-05": "05",
  "IDN-DC-06": "06",
  "DC-101": "101",
};
const APPLE = ["ios", "watchos", "ipados", "tvos"];
const USER_ID = ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id", "anonymousId"];
const TRAIT_EXCLUDES = [
  "_id", "age", "email", "firstName", "first_name", "firstname", "gender", "id", "lastName",
  "lastSeen", "last_name", "last_seen", "lastname", "mobile", "moeUnsubscribe",
  "moe_unsubscribe", "revenue", "source", "transactions",
];
const DEVICE_EXCLUDES = ["active", "push_preference", "id", "_id", "pushPreference"];

// [key, source paths, conversion]
const IDENTIFY_FIELDS = [
  ["name", ["traits.name", "context.traits.name"], String],
  ["first_name", ["traits.firstname", "traits.first_name", "traits.firstName", "context.traits.firstname", "context.traits.first_name", "context.traits.firstName"], String],
  ["last_name", ["traits.lastname", "traits.last_name", "traits.lastName", "context.traits.lastname", "context.traits.last_name", "context.traits.lastName"], String],
  ["email", ["traits.email", "context.traits.email"], String],
  ["age", ["traits.age", "context.traits.age"], Number],
  ["gender", ["traits.gender", "context.traits.gender"], String],
  ["mobile", ["traits.mobile", "context.traits.mobile"], String],
  ["source", ["traits.source", "context.traits.source"], String],
  ["created_time", ["traits.createdAt", "context.traits.createdAt"]],
  ["last_seen", ["traits.last_seen", "context.traits.last_seen", "traits.lastSeen", "context.traits.lastSeen"]],
  ["transactions", ["traits.transactions", "context.traits.transactions"], Number],
  ["revenue", ["traits.revenue", "context.traits.revenue"], Number],
  ["moe_unsubscribe", ["traits.moe_unsubscribe", "context.traits.moe_unsubscribe", "traits.moeUnsubscribe", "context.traits.moeUnsubscribe"]],
];

// ---------- helpers ----------

const usable = (v) => Boolean(v) || v === 0 || v === false;
const present = (v) => v !== undefined && v !== null;

function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (usable(v)) return v;
  }
  return null;
}

function required(event, paths) {
  const v = Array.isArray(paths) ? first(event, paths) : get(event, paths);
  if (!usable(v)) throw new DestinationError(`Missing required value from ${JSON.stringify(paths)}`, 400);
  return v;
}

function optional(out, key, value, convert) {
  let v = value;
  if (present(v) && convert) v = convert(v);
  if (usable(v)) out[key] = v;
}

function without(obj, keys) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (!keys.includes(k)) out[k] = v;
  return out;
}

// RudderStack's flattenJson: nested objects "a.b", array items "a[0]"; the members of the
// "" key land at the root.
function flatten(data) {
  const out = {};
  const walk = (cur, prop) => {
    if (Object(cur) !== cur) {
      out[prop] = cur;
    } else if (Array.isArray(cur)) {
      cur.forEach((item, i) => walk(item, `${prop}[${i}]`));
      if (cur.length === 0) out[prop] = [];
    } else {
      const keys = Object.keys(cur);
      for (const key of keys) walk(cur[key], prop ? `${prop}.${key}` : key);
      if (keys.length === 0 && prop) out[prop] = {};
    }
  };
  walk(data, "");
  return out;
}

function compact(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (present(v)) out[k] = v;
  return out;
}

// Attributes: flattened, or (useObjectData) the custom ones merged at the root as objects.
function finishAttributes(mapped, custom, useObjectData) {
  if (useObjectData) {
    return custom && typeof custom === "object" && !Array.isArray(custom) ? { ...mapped, ...custom } : mapped;
  }
  return flatten(custom === undefined ? mapped : { ...mapped, "": custom });
}

// ---------- time zone offsets ----------

const DAY = 1440;
function utcMinutes(y, m, d, h, mi = 0) {
  return Date.UTC(y, m - 1, d, h, mi) / 60000;
}
function weekdays(y, m, wd) {
  const days = [];
  const n = new Date(Date.UTC(y, m, 0)).getUTCDate();
  for (let d = 1; d <= n; d += 1) if (new Date(Date.UTC(y, m - 1, d)).getUTCDay() === wd) days.push(d);
  return days;
}
const nthSunday = (y, m, n) => {
  const s = weekdays(y, m, 0);
  return n > 0 ? s[n - 1] : s[s.length - 1];
};
const lastWeekday = (y, m, wd) => weekdays(y, m, wd).pop();

// Daylight saving rules: (year, standard offset, saving) → [start, end] in UTC minutes.
const TZ_RULES = {
  US: (y, S, D) => [utcMinutes(y, 3, nthSunday(y, 3, 2), 2) - S, utcMinutes(y, 11, nthSunday(y, 11, 1), 2) - S - D],
  EU: (y) => [utcMinutes(y, 3, nthSunday(y, 3, -1), 1), utcMinutes(y, 10, nthSunday(y, 10, -1), 1)],
  AU: (y, S, D) => [utcMinutes(y, 10, nthSunday(y, 10, 1), 2) - S, utcMinutes(y, 4, nthSunday(y, 4, 1), 3) - S - D],
  LH: (y, S, D) => [utcMinutes(y, 10, nthSunday(y, 10, 1), 2) - S, utcMinutes(y, 4, nthSunday(y, 4, 1), 2) - S - D],
  NZ: (y, S, D) => [utcMinutes(y, 9, nthSunday(y, 9, -1), 2) - S, utcMinutes(y, 4, nthSunday(y, 4, 1), 3) - S - D],
  CU: (y, S, D) => [utcMinutes(y, 3, nthSunday(y, 3, 2), 0) - S, utcMinutes(y, 11, nthSunday(y, 11, 1), 1) - S - D],
  IL: (y, S, D) => [utcMinutes(y, 3, nthSunday(y, 3, -1), 2) - S - 2 * DAY, utcMinutes(y, 10, nthSunday(y, 10, -1), 2) - S - D],
  LB: (y, S, D) => [utcMinutes(y, 3, nthSunday(y, 3, -1), 0) - S, utcMinutes(y, 10, nthSunday(y, 10, -1), 0) - S - D],
  EG: (y, S, D) => [utcMinutes(y, 4, lastWeekday(y, 4, 5), 0) - S, utcMinutes(y, 10, lastWeekday(y, 10, 4), 24) - S - D],
  MD: (y, S, D) => [utcMinutes(y, 3, nthSunday(y, 3, -1), 2) - S, utcMinutes(y, 10, nthSunday(y, 10, -1), 3) - S - D],
};

let zoneIndex = null;
function zones() {
  if (zoneIndex) return zoneIndex;
  zoneIndex = new Map();
  for (const [offset, names] of Object.entries(TZ_FIXED)) {
    for (const name of names.split(" ")) zoneIndex.set(name.toLowerCase(), { fixed: Number(offset) });
  }
  for (const [key, names] of Object.entries(TZ_RULED)) {
    const [rule, S, D] = key.split(",");
    for (const name of names.split(" ")) zoneIndex.set(name.toLowerCase(), { rule, S: Number(S), D: Number(D) });
  }
  for (const [name, list] of Object.entries(TZ_LISTED)) zoneIndex.set(name.toLowerCase(), { list });
  return zoneIndex;
}

// The zone's UTC offset in seconds now (undefined for an unknown zone), as RudderStack's
// moment-timezone lookup gives it.
function offsetSeconds(name, nowMs = Date.now()) {
  if (typeof name !== "string") return undefined;
  const zone = zones().get(name.trim().toLowerCase());
  if (!zone) return undefined;
  const now = nowMs / 60000;
  let minutes;
  if (zone.fixed !== undefined) {
    minutes = zone.fixed;
  } else if (zone.rule) {
    const year = new Date(nowMs).getUTCFullYear();
    const changes = [];
    for (const y of [year - 1, year, year + 1]) {
      const [start, end] = TZ_RULES[zone.rule](y, zone.S, zone.D);
      changes.push([start, zone.S + zone.D], [end, zone.S]);
    }
    changes.sort((a, b) => a[0] - b[0]);
    minutes = zone.S;
    for (const [at, offset] of changes) if (at <= now) minutes = offset;
  } else {
    minutes = zone.list[0][1];
    for (const [at, offset] of zone.list) if (at <= now) minutes = offset;
  }
  return minutes * 60;
}

// ---------- requests ----------

function origin(config) {
  const dc = DATA_CENTERS[config.region];
  if (!dc) throw new DestinationError(`The region is not valid (region: ${JSON.stringify(config.region ?? null)})`, 400);
  return baseUrl(config.apiBaseUrl, `https://api-${dc}.moengage.com`);
}

function headers(config, withAppKey = true) {
  const h = { "Content-Type": "application/json" };
  if (withAppKey) h["MOE-APPKEY"] = config.apiId;
  h.Authorization = `Basic ${base64(`${config.apiId}:${config.apiKey}`)}`;
  return h;
}

function request(endpoint, hdrs, body) {
  return { method: "POST", endpoint, headers: hdrs, params: {}, body: { JSON: compact(body) } };
}

function base(event, withDevice) {
  const out = { customer_id: required(event, USER_ID) };
  if (withDevice) optional(out, "device_id", get(event, "context.device.id"));
  return out;
}

function customer(event, config) {
  const basePayload = base(event, false);
  const url = `${origin(config)}/v1/customer/${config.apiId}`;
  const mapped = {};
  for (const [key, paths, convert] of IDENTIFY_FIELDS) optional(mapped, key, first(event, paths), convert);
  const traits = first(event, ["traits", "context.traits"]);
  const custom = traits && typeof traits === "object" ? without(traits, TRAIT_EXCLUDES) : undefined;
  const attributes = finishAttributes(mapped, custom, config.useObjectData);
  return request(url, headers(config), { ...basePayload, type: "customer", attributes });
}

function device(event, config) {
  const basePayload = base(event, true);
  const url = `${origin(config)}/v1/device/${config.apiId}`;
  const mapped = {};
  mapped.platform = required(event, ["context.device.type", "channel"]);
  mapped.push_id = required(event, "context.device.token");
  optional(mapped, "model", get(event, "context.device.model"));
  optional(mapped, "push_preference", first(event, ["properties.push_preference", "properties.pushPreference"]));
  optional(mapped, "app_version", get(event, "context.app.version"));
  optional(mapped, "os_version", get(event, "context.os.version"));
  optional(mapped, "active", get(event, "properties.active"));
  const props = event.properties;
  const custom = usable(props) && typeof props === "object" ? without(props, DEVICE_EXCLUDES) : undefined;
  const attributes = finishAttributes(mapped, custom, config.useObjectData);
  if (typeof attributes.platform === "string" && APPLE.includes(attributes.platform.toLowerCase())) {
    attributes.platform = "iOS";
  }
  return request(url, headers(config), { ...basePayload, type: "device", attributes });
}

function track(event, config) {
  const basePayload = base(event, true);
  const url = `${origin(config)}/v1/event/${config.apiId}`;
  const action = { action: required(event, "event") };
  const props = event.properties;
  if (present(props)) {
    const attributes = config.useObjectData || typeof props !== "object" ? props : flatten(props);
    if (usable(attributes)) action.attributes = attributes;
  }
  optional(action, "platform", first(event, ["context.device.type", "channel"]));
  optional(action, "app_version", get(event, "context.app.version"));
  optional(action, "current_time", first(event, ["timestamp", "originalTimestamp"]));
  const tz = get(event, "context.timezone");
  if (present(tz)) optional(action, "user_timezone_offset", offsetSeconds(tz));
  if (typeof action.platform === "string" && APPLE.includes(action.platform.toLowerCase())) action.platform = "iOS";
  return request(url, headers(config), { ...basePayload, type: "event", actions: [action] });
}

function merge(event, config) {
  const retained = required(event, "userId");
  const merged = required(event, "previousId");
  const url = `${origin(config)}/v1/customer/merge?app_id=${config.apiId}`;
  return request(url, headers(config, false), { merge_data: [{ retained_user: retained, merged_user: merged }] });
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.apiId) throw new DestinationError("MoEngage API ID (workspace id) is required (apiId)", 400);
  if (!config.apiKey) throw new DestinationError("MoEngage API key is required (apiKey)", 400);
  if (!event.type) throw new DestinationError("Event type is required", 400);
  const type = String(event.type).toLowerCase();
  switch (type) {
    case "identify": {
      const user = customer(event, config);
      if (event.context?.device?.type && event.context?.device?.token) return [user, device(event, config)];
      return user;
    }
    case "track":
      return track(event, config);
    case "alias":
      return merge(event, config);
    default:
      throw new UnsupportedEventError(
        `Event type ${type} is not supported: MoEngage takes identify, track and alias`,
      );
  }
}
